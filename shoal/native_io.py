"""Native transports: an established connection's socket (and, for HBONE, its TLS records) owned in C.

`open_tcp` and `open_tls` make the transport of one connection for a
protocol, as `loop.create_connection(sock=...)` / `connect_accepted_socket`
do, and return (transport, protocol). With the native transports in use
(`SHOAL_RELAY=native`, or unset with `shoal._native` built and usable: see
`shoal.relay_lane`) the transport is `shoal._native.Transport`: the socket
driven by the running loop through add_reader / add_writer with C callables,
TLS by OpenSSL straight on the socket (see shoal/_native_core.c and
shoal/_native_tls.c). Otherwise they are the loop's own calls, unchanged.

One TLS policy: the TLS transport uses the SSL_CTX inside the mesh's
`ssl.SSLContext` (built by `shoal.identity`, the only place where versions,
certificates, trust and ALPN are set). A context the extension cannot use
as it is (a layout or an OpenSSL that is not the one expected, or a context
with Python-level callbacks, which need `ssl`'s own objects) is not used
natively: that connection takes the loop's path, and the process says why
once. Never a weaker TLS: the fallback is the same context through `ssl`.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

from shoal import log

logger = log.get("shoal.native_io")

_API = 1            # the extension's NATIVE_API this module speaks to


def _ssl_error(kind: int, reason: str, library: str, where: str, verify_code: int,
               verify_message: str) -> ssl.SSLError:
    """The ssl.SSLError for an OpenSSL error, shaped as `ssl` shapes its own (reason, library, and for a
    refused certificate `SSLCertVerificationError` with verify_code and verify_message)."""
    text = reason.replace("_", " ").lower() if reason else "TLS error"
    if verify_code:
        error = ssl.SSLCertVerificationError(kind, f"[{library}: {reason}] {text}: {verify_message} ({where})")
        error.verify_code, error.verify_message = verify_code, verify_message
    else:
        error = ssl.SSLError(kind, f"[{library or 'SSL'}: {reason or 'UNKNOWN'}] {text} ({where})")
    error.reason, error.library = reason or None, library or None
    return error


def load() -> tuple[object | None, str]:
    """(the extension, "") when it is built and usable here, else (None, why not)."""
    try:
        from shoal import _native
    except ImportError as e:
        return None, f"shoal._native is not built ({e})"
    if getattr(_native, "API", None) != _API:
        return None, "the built shoal._native is out of date"
    if _native.OPENSSL_VERSION_NUMBER != ssl.OPENSSL_VERSION_NUMBER:
        return None, (f"shoal._native links OpenSSL {_native.OPENSSL_VERSION_NUMBER:#x}, Python's ssl "
                      f"{ssl.OPENSSL_VERSION_NUMBER:#x}")
    _native.configure(_ssl_error, ssl.SSLContext.__mro__[1])
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.minimum_version = ssl.TLSVersion.TLSv1_2
    probe.maximum_version = ssl.TLSVersion.TLSv1_3
    try:
        _native.check_context(probe)
    except (TypeError, ValueError) as e:
        return None, f"Python's ssl.SSLContext cannot be read natively: {e}"
    return _native, ""


_native = None      # set by shoal.relay_lane when the native transports are in use
in_use = False      # tests turn it off to run the loop's transports in a process that has them
_refused: set[str] = set()


def use(module) -> None:
    global _native, in_use
    _native, in_use = module, module is not None


def _extra(sock: socket.socket, context: ssl.SSLContext | None) -> dict:
    extra: dict = {"socket": sock}
    for name, read in (("peername", sock.getpeername), ("sockname", sock.getsockname)):
        try:
            extra[name] = read()
        except OSError:
            pass
    if context is not None:
        extra["sslcontext"] = context
    return extra


def _usable(context: ssl.SSLContext) -> bool:
    why = ""
    if context.keylog_filename or context.sni_callback is not None or getattr(context, "_msg_callback", None):
        why = "the context has Python-level callbacks (keylog, SNI or message callback)"
    else:
        try:
            _native.check_context(context)
        except (TypeError, ValueError) as e:
            why = str(e)
    if why and why not in _refused:
        _refused.add(why)
        logger.warning("native TLS transport not used for a context; ssl's is", reason=why)
    return not why


async def open_tcp(protocol_factory, sock: socket.socket, *, accepted: bool):
    """A connected TCP socket's transport and protocol (connect_accepted_socket or create_connection)."""
    loop = asyncio.get_running_loop()
    if not in_use:
        if accepted:
            return await loop.connect_accepted_socket(protocol_factory, sock)
        return await loop.create_connection(protocol_factory, sock=sock)
    sock.setblocking(False)
    protocol = protocol_factory()
    transport = _native.Transport(loop, protocol, sock, _extra(sock, None))
    try:
        transport._start()
    except BaseException:
        transport.abort()
        raise
    return transport, protocol


async def open_tls(protocol_factory, sock: socket.socket, context: ssl.SSLContext, *, server_side: bool,
                   handshake_timeout: float):
    """TLS on a connected socket (no SNI on the client side, as the mesh's peers are named by their
    certificates): the handshake, then (transport, protocol). A failed handshake raises what `ssl` raises
    (an ssl.SSLError with OpenSSL's reason, or an OSError), a slow one ConnectionAbortedError."""
    loop = asyncio.get_running_loop()
    if not in_use or not _usable(context):
        if server_side:
            transport, _ = await loop.connect_accepted_socket(protocol_factory, sock, ssl=context,
                                                              ssl_handshake_timeout=handshake_timeout)
            return transport, transport.get_protocol()
        return await loop.create_connection(protocol_factory, sock=sock, ssl=context, server_hostname="",
                                            ssl_handshake_timeout=handshake_timeout)
    sock.setblocking(False)
    protocol = protocol_factory()
    waiter = loop.create_future()
    transport = _native.Transport(loop, protocol, sock, _extra(sock, context), context, server_side, waiter)
    try:
        transport._start()
        await asyncio.wait_for(waiter, handshake_timeout)
    except asyncio.TimeoutError:
        transport.abort()
        raise ConnectionAbortedError(f"TLS handshake is taking longer than {handshake_timeout} seconds: "
                                     "aborting the connection") from None
    except BaseException:
        transport.abort()
        raise
    return transport, protocol
