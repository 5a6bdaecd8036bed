"""What a proxy process (the ztunnel, a waypoint) needs around its data path, written once.

- `ControlPlaneLink`: the trust bundle (reloaded when it changes), the one
  state store fed by `Config.Watch`, the Sign client and the certificate
  manager, built from where the control plane is and how to prove who we are.
- `AdminPorts`: the three small HTTP endpoints of a proxy (`shoal.admin_http`):
  metrics (15020, `/metrics` and Istio's `/stats/prometheus`), readiness
  (15021, `/healthz/ready`) and admin (15000 on 127.0.0.1, JSON dumps).
- `stop(...)`: the end of a process: cancel its loops, close its ports, wait.
- `return_freed_memory()`: one of every proxy's loops (in `ControlPlaneLink.loops`): hands the
  pages of freed buffers back to the kernel (glibc's `malloc_trim`) when many are held.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

from shoal import admin_http, contracts
from shoal.certs import CertManager
from shoal.config_client import NODE_TYPES, WAYPOINT_TYPES, ClientSettings, ConfigClient, SignClient
from shoal.proxy_state import ProxyState
from shoal.trust_bundle import TrustBundle

Readiness = Callable[[], tuple[bool, str]]   # () -> (ready, why in words)


@dataclass
class ControlPlaneLink:
    bundle: TrustBundle
    settings: ClientSettings
    state: ProxyState
    watch: ConfigClient
    sign: SignClient
    certs: CertManager

    @classmethod
    async def open(cls, target: str, bundle_path: Path, token: Callable[[], str], *, trust_domain: str,
                   stopping: asyncio.Event, node: str = "", waypoint: tuple[str, str] | None = None,
                   bundle_wait_seconds: float = 60.0) -> "ControlPlaneLink":
        """Waits for the trust bundle (TrustBundleMissing if none comes), then builds the rest;
        a ztunnel names its `node`, a waypoint its Gateway `(namespace, name)`."""
        bundle = TrustBundle(bundle_path)
        await bundle.wait(stopping, bundle_wait_seconds)
        namespace, name = waypoint or ("", "")
        settings = ClientSettings(target=target, bundle_pem=bundle.current, token=token, node=node,
                                  waypoint_namespace=namespace, waypoint_name=name)
        state = ProxyState(trust_domain, waypoint=waypoint, expects=WAYPOINT_TYPES if waypoint else NODE_TYPES)
        sign = SignClient(settings)
        return cls(bundle, settings, state, ConfigClient(settings, on_update=state.apply_update), sign,
                   CertManager(sign.sign))

    def loops(self) -> list[Awaitable[None]]:
        """What every proxy runs beside its data path: the config stream, certificates, freed memory."""
        return [self.watch.run(), self.certs.run(), return_freed_memory()]

    def config_missing(self) -> str:
        """Why the proxy is not ready as far as config goes ("" once the whole of it arrived)."""
        if self.state.synced:
            return ""
        return f"no config from the control plane at {self.settings.target} yet"

    def ready_as(self, identity) -> tuple[bool, str]:
        """Readiness of a one-identity proxy (the waypoint, the ingress gateway): the whole config,
        then a valid certificate for `identity`."""
        missing = self.config_missing()
        if missing:
            return False, missing
        if self.certs.valid(identity) is None:
            return False, f"no certificate yet: {self.certs.last_error.get(identity, 'fetching')}"
        return True, "ready"

    async def close(self) -> None:
        self.watch.stop()
        await self.sign.close()


def metrics_routes(render: Callable[[], bytes]) -> dict:
    body = lambda: (200, "text/plain; version=0.0.4", render())  # noqa: E731
    return {"/metrics": body, "/stats/prometheus": body}


def readiness_routes(ready: Readiness) -> dict:
    def answer():
        ok, why = ready()
        return (200 if ok else 503), "text/plain", (why + "\n").encode()
    return {"/healthz/ready": answer}


async def serve_admin_ports(listen: str, *, render_metrics: Callable[[], bytes], ready: Readiness,
                            admin_routes: dict, admin_address: str = "127.0.0.1",
                            metrics_port: int = contracts.METRICS_PORT,
                            readiness_port: int = contracts.READINESS_PORT,
                            admin_port: int = contracts.ADMIN_PORT) -> list[asyncio.AbstractServer]:
    return [
        await admin_http.serve(listen, metrics_port, metrics_routes(render_metrics)),
        await admin_http.serve(listen, readiness_port, readiness_routes(ready)),
        await admin_http.serve(admin_address, admin_port, admin_routes),
    ]


# -- freed memory ----------------------------------------------------------------------------

# glibc's malloc keeps the pages of freed chunks inside its heap: a burst of buffers (opaque TCP through
# the waypoint: 34 MiB of them after an iperf3 run) stayed resident for good, though free, as long as
# anything lived above them. malloc_trim(0) gives back every whole free page (0.1 ms for 40 MiB free;
# pages already given back cost less).
TRIM_EVERY_SECONDS = 10.0
TRIM_WHEN_FREE_BYTES = 4 * 1024 * 1024


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


@functools.cache
def _glibc():
    """The process's libc with malloc_trim and mallinfo2 typed, bound once (None when not glibc 2.33+)."""
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "malloc_trim") or not hasattr(libc, "mallinfo2"):
        return None          # not glibc (or older than 2.33): nothing to do
    libc.mallinfo2.restype = _MallInfo2
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


def free_heap_bytes() -> int:
    """Bytes malloc holds free in its main heap (0 when this is not glibc)."""
    libc = _glibc()
    return libc.mallinfo2().fordblks if libc is not None else 0


def trim_if_worth_it(threshold: int = TRIM_WHEN_FREE_BYTES) -> bool:
    """One check: trims when more than `threshold` bytes are free in the heap; True if it trimmed."""
    libc = _glibc()
    if libc is None or libc.mallinfo2().fordblks < threshold:
        return False
    libc.malloc_trim(0)
    return True


async def return_freed_memory(every: float = TRIM_EVERY_SECONDS) -> None:
    while True:
        await asyncio.sleep(every)
        trim_if_worth_it()


async def stop(tasks: list[asyncio.Task], servers: list[asyncio.AbstractServer]) -> None:
    """Cancels the process's loops and closes its ports; returns once the loops have ended."""
    for task in tasks:
        task.cancel()
    for server in servers:
        server.close()
    await asyncio.gather(*tasks, return_exceptions=True)
