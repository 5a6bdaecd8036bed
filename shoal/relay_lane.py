"""Which relay carries established HBONE tunnels: native transports with the compiled lane, the compiled
lane (`shoal._relay`) on the loop's transports, or pure Python.

`SHOAL_RELAY` chooses, once per process, at import:
- unset (the default): native when both extensions are built and usable here
  (`pip install` of this project builds them; `scripts/setup.sh` does), else
  compiled when the lane is built, else Python;
- `native`: the lane, and the sockets and TLS records of established
  connections owned in C (`shoal.native_io`, `shoal._native`);
- `compiled`: the lane on the loop's (uvloop's) transports;
- `python`: the pure-Python path only (for comparison, or a machine without a
  compiler).
An explicit choice this installation cannot give stops the process with a
message saying how to build it, rather than run slower unnoticed.

The lane is three base classes. `HboneSession` (`shoal.hbone_io`) and
`TcpSide` (`shoal.hbone_relay`) take their `data_received` from them, and
`TunnelStream` is marked by one, so a read of the app or of the TLS
connection that is the plain case of one DATA frame is carried in one C call
(see `shoal/_relay.c`); everything else, and everything when the lane is off,
goes to their `_data_received_python`, the Python path, which stays where
every tunnel rule lives. Both leave the same state (tests/shoal/test_relay_lane.py).
"""

from __future__ import annotations

import os

from h2.stream import STREAM_OPEN, StreamState

from shoal import log, native_io
from shoal.errors import ShoalError

_API = 4          # the extension's LANE_API this module speaks to; a stale build is not used
_CHOICES = ("native", "compiled", "python")


class RelayLaneError(ShoalError):
    """SHOAL_RELAY asks for what this installation cannot give."""


def _choose(requested: str) -> object | None:
    """The extension module to use, or None for the Python path."""
    if requested not in ("", *_CHOICES):
        raise RelayLaneError(f"SHOAL_RELAY={requested!r} is not one of {', '.join(_CHOICES)} (or unset)")
    if requested == "python":
        return None
    try:
        from shoal import _relay
    except ImportError as e:
        why = f"the compiled relay is not built ({e}); scripts/setup.sh builds shoal/_relay.c"
    else:
        if getattr(_relay, "API", None) == _API:
            return _relay
        why = "the built shoal._relay is out of date; rebuild it with scripts/setup.sh"
    if requested in ("compiled", "native"):
        raise RelayLaneError(f"SHOAL_RELAY={requested} but {why}, or set SHOAL_RELAY=python")
    log.get("shoal.relay_lane").warning("the pure-Python relay carries tunnels (slower)", reason=why)
    return None


def _choose_native(requested: str) -> object | None:
    """The native transports' extension, or None for the loop's transports."""
    if requested not in ("", "native"):
        return None
    module, why = native_io.load()
    if module is None and requested == "native":
        raise RelayLaneError(f"SHOAL_RELAY=native but the native transports cannot be used: {why}; run "
                             "scripts/setup.sh (it builds shoal/_native_*.c against libssl-dev), or set "
                             "SHOAL_RELAY=compiled")
    if module is None and not why.startswith("shoal._native is not built"):
        log.get("shoal.relay_lane").warning("native transports not used", reason=why)
    return module


def _configure(module) -> None:
    """Hands the extension the state sets it checks, read off h2's and the core's own tables."""
    from shoal import hbone, hbone_lean

    module.configure(hbone_lean._CONNECTION_OPEN, hbone_lean._STREAM_SENDS, hbone_lean._STREAM_RECEIVES,
                     frozenset(state for state in StreamState if STREAM_OPEN[state]),
                     hbone._WRITABLE, hbone._RECEIVABLE, hbone._Tunnel)


_requested = os.environ.get("SHOAL_RELAY", "").strip().lower()
_module = _choose(_requested)
COMPILED = _module is not None
if COMPILED:      # the native transports work with the lane only
    native_io.use(_choose_native(_requested))
NATIVE = native_io.in_use
NAME = "native" if NATIVE else "compiled" if COMPILED else "python"
# Whether a new HboneSession takes the lane when not told (its `lane` argument). Tests turn it off to
# run the Python path in a process that has the lane built.
sessions_take_lane = COMPILED

if _module is not None:
    _configure(_module)
    SessionBase = _module.SessionBase
    StreamBase = _module.StreamBase
    TcpSideBase = _module.TcpSideBase
else:
    class SessionBase:
        """The Python path: HboneSession.data_received is its _data_received_python."""

        __slots__ = ()
        lane_enabled = False

    class StreamBase:
        __slots__ = ()

        def _write_plain(self, data: bytes) -> bool:
            return False   # no lane: write() sends it

    class TcpSideBase:
        __slots__ = ()


def write_natively(tcp_side: type) -> None:
    """With the native transports in use, the lane writes to them in C (frames to the TLS transport, payloads
    to `tcp_side`'s own, doing what its write() does); called once by shoal.hbone_relay."""
    if NATIVE:
        _module.use_native(native_io._native.C_API, tcp_side)


__all__ = ["COMPILED", "NAME", "NATIVE", "RelayLaneError", "SessionBase", "StreamBase", "TcpSideBase"]
