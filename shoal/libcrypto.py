"""The proxies' key pair and CSR, made by OpenSSL's libcrypto through ctypes.

A proxy needs few things from a crypto library beyond TLS: an ECDSA P-256
key, a PKCS#10 request for its SPIFFE ID signed with it, and the key as
PEM for `ssl`. The `cryptography` package would cost each proxy process
about 10 MiB resident for them; the libcrypto that `ssl` already maps does
them with no new library. (Reading certificates is `shoal.x509_der`.)

    key = EcKey.generate()
    key.pem()                         # PKCS#8, unencrypted, as ssl.load_cert_chain reads it
    key.csr_pem("spiffe://td/ns/a/sa/b")

The request is what `shoal.identity.make_csr` always made: version 1, an
empty subject, one extension request with the subject alternative name (the
URI alone, critical), signed with ECDSA and SHA-256. Every OpenSSL object
made for a call is freed before it returns; the key's own on collection.

OpenSSL 3.0 or later: the key is made through the 3.0 API
(EVP_PKEY_CTX_new_from_name, EVP_PKEY_generate, the group by name); an older
libcrypto is refused at import, with LibcryptoError naming what it lacks.
"""

from __future__ import annotations

import ctypes
import ssl  # noqa: F401 - maps the libcrypto this module binds to (the one `ssl` uses)

from shoal.errors import ShoalError

NID_SUBJECT_ALT_NAME = 85
GEN_URI = 6
BIO_CTRL_INFO = 3


class LibcryptoError(ShoalError):
    """libcrypto refused a call; the message names the call and OpenSSL's reason."""


def _libcrypto_path() -> str:
    """The libcrypto this process already maps for `ssl` (so no second copy is loaded)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.rstrip("\n").partition("/")[2]
            if path and "/libcrypto.so" in "/" + path:
                return "/" + path
    return "libcrypto.so.3"


def _bind(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    p, i, c = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    for name, restype, argtypes in (
        ("EVP_PKEY_CTX_new_from_name", p, [p, c, c]),
        ("EVP_PKEY_CTX_free", None, [p]),
        ("EVP_PKEY_keygen_init", i, [p]),
        ("EVP_PKEY_CTX_set_group_name", i, [p, c]),
        ("EVP_PKEY_generate", i, [p, ctypes.POINTER(p)]),
        ("EVP_PKEY_free", None, [p]),
        ("EVP_sha256", p, []),
        ("BIO_s_mem", p, []),
        ("BIO_new", p, [p]),
        ("BIO_free", i, [p]),
        ("BIO_ctrl", ctypes.c_long, [p, i, ctypes.c_long, p]),
        ("PEM_write_bio_PrivateKey", i, [p, p, p, p, i, p, p]),
        ("PEM_write_bio_X509_REQ", i, [p, p]),
        ("X509_REQ_new", p, []),
        ("X509_REQ_free", None, [p]),
        ("X509_REQ_set_version", i, [p, ctypes.c_long]),
        ("X509_REQ_set_pubkey", i, [p, p]),
        ("X509_REQ_add_extensions", i, [p, p]),
        ("X509_REQ_sign", i, [p, p, p]),
        ("ASN1_IA5STRING_new", p, []),
        ("ASN1_STRING_set", i, [p, c, i]),
        ("ASN1_STRING_free", None, [p]),
        ("GENERAL_NAME_new", p, []),
        ("GENERAL_NAME_free", None, [p]),
        ("GENERAL_NAME_set0_value", None, [p, i, p]),
        ("GENERAL_NAMES_free", None, [p]),
        ("X509V3_EXT_i2d", p, [i, i, p]),
        ("X509_EXTENSION_free", None, [p]),
        ("OPENSSL_sk_new_null", p, []),
        ("OPENSSL_sk_push", i, [p, p]),
        ("OPENSSL_sk_free", None, [p]),
        ("ERR_get_error", ctypes.c_ulong, []),
        ("ERR_error_string_n", None, [ctypes.c_ulong, c, ctypes.c_size_t]),
    ):
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise LibcryptoError(f"{path} has no {name}: shoal.libcrypto needs OpenSSL 3.0 or later, the "
                                 "libcrypto Python's ssl module uses") from None
        fn.restype, fn.argtypes = restype, argtypes
    return lib


_lib = _bind(_libcrypto_path())


def _failed(call: str) -> LibcryptoError:
    reasons = []
    while code := _lib.ERR_get_error():
        buf = ctypes.create_string_buffer(256)
        _lib.ERR_error_string_n(code, buf, len(buf))
        reasons.append(buf.value.decode(errors="replace"))
    return LibcryptoError(f"libcrypto {call} failed: {'; '.join(reasons) or 'no reason given'}")


def _check(ok: int, call: str) -> None:
    if ok != 1:
        raise _failed(call)


def _pem_of(write, obj, *extra) -> bytes:
    bio = _lib.BIO_new(_lib.BIO_s_mem())
    if not bio:
        raise _failed("BIO_new")
    try:
        _check(write(bio, obj, *extra), write.__name__)
        data = ctypes.c_void_p()
        size = _lib.BIO_ctrl(bio, BIO_CTRL_INFO, 0, ctypes.byref(data))
        return ctypes.string_at(data, size)
    finally:
        _lib.BIO_free(bio)


class EcKey:
    """An ECDSA P-256 private key held by libcrypto (an EVP_PKEY)."""

    def __init__(self, handle: int) -> None:
        self._handle = ctypes.c_void_p(handle)

    @classmethod
    def generate(cls) -> "EcKey":
        ctx = _lib.EVP_PKEY_CTX_new_from_name(None, b"EC", None)
        if not ctx:
            raise _failed("EVP_PKEY_CTX_new_from_name(EC)")
        try:
            _check(_lib.EVP_PKEY_keygen_init(ctx), "EVP_PKEY_keygen_init")
            _check(_lib.EVP_PKEY_CTX_set_group_name(ctx, b"P-256"), "EVP_PKEY_CTX_set_group_name(P-256)")
            handle = ctypes.c_void_p()
            _check(_lib.EVP_PKEY_generate(ctx, ctypes.byref(handle)), "EVP_PKEY_generate")
        finally:
            _lib.EVP_PKEY_CTX_free(ctx)
        return cls(handle.value)

    def __del__(self) -> None:
        if self._handle and _lib is not None:
            _lib.EVP_PKEY_free(self._handle)
            self._handle = None

    def pem(self) -> bytes:
        """PKCS#8 PEM, unencrypted."""
        return _pem_of(_lib.PEM_write_bio_PrivateKey, self._handle, None, None, 0, None, None)

    def csr_pem(self, uri: str) -> bytes:
        """A PEM PKCS#10 request: empty subject, `uri` as the only (critical) SAN, ECDSA with SHA-256."""
        req = _lib.X509_REQ_new()
        names = _lib.OPENSSL_sk_new_null()
        extensions = _lib.OPENSSL_sk_new_null()
        extension = None
        try:
            if not (req and names and extensions):
                raise _failed("X509_REQ_new")
            _check(_lib.X509_REQ_set_version(req, 0), "X509_REQ_set_version")
            _check(_lib.X509_REQ_set_pubkey(req, self._handle), "X509_REQ_set_pubkey")
            _push_uri(names, uri)
            extension = _lib.X509V3_EXT_i2d(NID_SUBJECT_ALT_NAME, 1, names)
            if not extension:
                raise _failed("X509V3_EXT_i2d(subjectAltName)")
            if _lib.OPENSSL_sk_push(extensions, extension) <= 0:
                raise _failed("OPENSSL_sk_push")
            _check(_lib.X509_REQ_add_extensions(req, extensions), "X509_REQ_add_extensions")
            if _lib.X509_REQ_sign(req, self._handle, _lib.EVP_sha256()) <= 0:
                raise _failed("X509_REQ_sign")
            return _pem_of(_lib.PEM_write_bio_X509_REQ, req)
        finally:
            if extension:
                _lib.X509_EXTENSION_free(extension)
            _lib.OPENSSL_sk_free(extensions)
            _lib.GENERAL_NAMES_free(names)      # frees the names pushed onto it too
            _lib.X509_REQ_free(req)


def _push_uri(names, uri: str) -> None:
    """Pushes a URI GeneralName onto `names` (which then owns it); frees what it made if a call fails."""
    value = uri.encode("ascii")
    ia5 = _lib.ASN1_IA5STRING_new()
    if not ia5:
        raise _failed("ASN1_IA5STRING_new")
    name = None
    try:
        if _lib.ASN1_STRING_set(ia5, value, len(value)) != 1:
            raise _failed("ASN1_STRING_set")
        name = _lib.GENERAL_NAME_new()
        if not name:
            raise _failed("GENERAL_NAME_new")
        _lib.GENERAL_NAME_set0_value(name, GEN_URI, ia5)      # the name owns the string from here
        ia5 = None
        if _lib.OPENSSL_sk_push(names, name) <= 0:
            raise _failed("OPENSSL_sk_push")
        name = None                                           # the stack owns the name from here
    finally:
        if name:
            _lib.GENERAL_NAME_free(name)
        if ia5:
            _lib.ASN1_STRING_free(ia5)
