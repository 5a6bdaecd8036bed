"""The mesh trust bundle on disk, read again whenever it changes.

The control plane writes its root certificates to a file (a ConfigMap in
Kubernetes, `/run/shoal/<cluster>/ca/bundle.pem` in the local cluster);
roots rotate, so a reader that read it once at start would go on trusting
the old root. `TrustBundle.current()` looks at the file's identity (inode,
size, modification time) on each call, which costs one `stat`, and reads
and checks the file again when it changed. A bundle that turns unreadable
or invalid is not taken: the last good one stays, and a warning says why.

Used by the ztunnel, the waypoint and their control-plane client
(`shoal.config_client.ClientSettings(bundle_pem=bundle.current)`), which
open every new channel with the current bundle.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from shoal import identity, log

logger = log.get("shoal.trust_bundle")


class TrustBundleMissing(identity.IdentityError):
    """No usable trust bundle at the path; the message says what to do."""


class TrustBundle:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.generation = 0          # grows on every reload; a cheap "did it change" for callers
        self._pem: bytes | None = None
        self._seen: tuple[int, int, int] | None = None

    def current(self) -> bytes:
        """The bundle's PEM bytes, re-read if the file changed; TrustBundleMissing if none was ever good."""
        try:
            st = os.stat(self.path)
            seen = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError as e:
            seen = None
            problem = f"cannot read {self.path}: {e.strerror or e}"
        if seen is not None and seen != self._seen:
            problem = self._load(seen)
        elif seen is not None:
            problem = ""
        if self._pem is None:
            raise TrustBundleMissing(f"no mesh trust bundle: {problem or 'empty'}; start the control plane "
                                     "first (it writes the bundle) or pass --ca-bundle")
        return self._pem

    def _load(self, seen: tuple[int, int, int]) -> str:
        """Reads the file; returns what was wrong with it ("" when it was taken)."""
        try:
            data = self.path.read_bytes()
        except OSError as e:
            return f"cannot read {self.path}: {e.strerror or e}"
        if not data.strip():
            return f"{self.path} is empty"
        try:
            if not identity.read_certificates(data):
                return f"{self.path} holds no certificate"
        except identity.InvalidCertificate as e:
            logger.warning("trust bundle on disk is not valid; keeping the previous one", path=str(self.path),
                           error=str(e))
            self._seen = seen  # do not re-read the same bad file on every call
            return str(e)
        self._seen = seen
        if data != self._pem:
            if self._pem is not None:
                logger.info("trust bundle changed on disk; new connections use it", path=str(self.path))
            self._pem = data
            self.generation += 1
        return ""

    async def wait(self, stopping: asyncio.Event | None = None, seconds: float = 60.0,
                   every: float = 0.5) -> bytes:
        """Waits up to `seconds` for a usable bundle (the control plane may still be starting)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                return self.current()
            except TrustBundleMissing:
                if time.monotonic() >= deadline or (stopping is not None and stopping.is_set()):
                    raise
            await asyncio.sleep(every)
