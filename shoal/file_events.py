"""Waiting for a file in a directory to change, with the kernel's inotify.

The local cluster's store is watched by every component of a cluster (the
control plane, the node agents, the kubelet). Polling its journal every few
milliseconds kept each of them awake 50 times a second with nothing to do;
Kubernetes pushes watch events, and inotify lets the store push too: a
watcher sleeps until the kernel says the journal was written or replaced.

`DirectoryChanges(directory, names)` watches `directory` (not recursively)
for writes, creations, renames onto and removals of the files called `names`,
and for the directory itself going away. Its waits (`wait` blocking,
`wait_async` on the asyncio loop) return on such a change or at the timeout;
a caller then looks at the files itself, so a wake-up with nothing new costs
one look and nothing is lost: the watch is armed in the constructor, before
the caller's first look.

Where inotify cannot be had (no libc symbol, the per-user instance limit
reached: `fs.inotify.max_user_instances`), the waits sleep `POLL_SECONDS`
instead, and the first such fallback in a process is logged with the reason.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import select
import struct
import time
from pathlib import Path

from shoal import log

logger = log.get("shoal.file_events")

POLL_SECONDS = 0.02  # the fallback's period, what every watcher used to poll at

IN_MODIFY = 0x00000002
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_FILE_MASK = IN_MODIFY | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
_SELF_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED
_EVENT_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)

_fallback_logged = False


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.inotify_init1, libc.inotify_add_watch


def _fall_back(reason: str) -> None:
    global _fallback_logged
    if not _fallback_logged:
        _fallback_logged = True
        logger.warning("inotify unavailable; store watchers poll instead", reason=reason,
                       check="fs.inotify.max_user_instances, or a kernel built with inotify")


class DirectoryChanges:
    """One inotify instance watching one directory for changes to some of its files."""

    def __init__(self, directory: Path, names: frozenset[str] | set[str]) -> None:
        self.directory = Path(directory)
        self.names = frozenset(n.encode() for n in names)
        self.fd: int | None = None
        self.gone = False  # the directory went away, and the kernel's watch with it
        try:
            init1, add_watch = _libc()
        except (OSError, AttributeError) as e:
            _fall_back(f"no inotify in libc: {e}")
            return
        fd = init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            _fall_back(os.strerror(ctypes.get_errno()))
            return
        if add_watch(fd, os.fsencode(self.directory), _FILE_MASK | IN_DELETE_SELF | IN_MOVE_SELF) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            if err != errno.ENOENT:  # a directory that is not there: the caller's first look says so
                _fall_back(f"watching {self.directory}: {os.strerror(err)}")
            return
        self.fd = fd

    @property
    def polling(self) -> bool:
        return self.fd is None or self.gone

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "DirectoryChanges":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def drain(self) -> bool:
        """Reads what the kernel queued; True when one of the files or the directory changed.

        Once the directory is gone the watch is too: from then on the waits poll, so a caller
        that waits again (a directory made anew under the same name) is woken on time to look."""
        changed = False
        while self.fd is not None and not self.gone:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            offset = 0
            while offset < len(data):
                _wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(data, offset)
                name = data[offset + _EVENT_HEADER.size: offset + _EVENT_HEADER.size + length].rstrip(b"\0")
                offset += _EVENT_HEADER.size + length
                if mask & (_SELF_GONE | IN_Q_OVERFLOW) or name in self.names:
                    changed = True
                if mask & _SELF_GONE:
                    self.gone = True
        return changed

    def wait(self, timeout: float | None) -> None:
        """Blocks until a change (or the timeout, None for none)."""
        if self.polling:
            time.sleep(POLL_SECONDS if timeout is None else min(timeout, POLL_SECONDS))
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready or self.drain() or self.gone:
                return  # (other files' changes do not start the timeout again)

    async def wait_async(self, timeout: float | None) -> None:
        """`wait` on the running loop: the fd is a reader, nothing else runs while nothing changes."""
        if self.polling:
            await asyncio.sleep(POLL_SECONDS if timeout is None else min(timeout, POLL_SECONDS))
            return
        loop = asyncio.get_running_loop()
        woken = loop.create_future()
        fd = self.fd

        def readable() -> None:
            if (self.drain() or self.gone) and not woken.done():
                woken.set_result(None)
        loop.add_reader(fd, readable)
        try:
            await asyncio.wait_for(woken, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            loop.remove_reader(fd)
