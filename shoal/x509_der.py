"""What the proxies read from X.509 certificates, by a small DER reader written here.

A proxy reads three facts from certificates: their validity (when its own
is due for renewal or expired), the URI names of the subject alternative
name (a peer's SPIFFE ID) and, for a PEM list, that it holds certificates
at all. That does not need a whole X.509 library (the `cryptography`
package costs a proxy about 10 MiB resident); the structure is read here
from RFC 5280's ASN.1, strictly: every length is checked against what
holds it, and anything that is not a certificate is refused with
`CertificateFormatError` (a ValueError) saying where.

    facts = read_der(der_bytes)        # CertificateFacts(der, not_before, not_after, uris)
    read_pem(pem_bytes)                # [CertificateFacts, ...], one per CERTIFICATE block

Signatures are not checked here: chains are verified by OpenSSL during the
TLS handshake, and a certificate of our own came from the CA over TLS.
"""

from __future__ import annotations

import binascii
import datetime as dt
import re
from dataclasses import dataclass

SEQUENCE, INTEGER, BOOLEAN, OCTET_STRING, BIT_STRING, OID = 0x30, 0x02, 0x01, 0x04, 0x03, 0x06
UTC_TIME, GENERALIZED_TIME = 0x17, 0x18
VERSION_TAG, EXTENSIONS_TAG = 0xA0, 0xA3     # [0] EXPLICIT version, [3] EXPLICIT extensions
OPTIONAL_TAGS = (0x81, 0x82, EXTENSIONS_TAG)   # [1] issuerUniqueID, [2] subjectUniqueID (IMPLICIT), [3]
URI_NAME = 0x86                              # GeneralName uniformResourceIdentifier, [6] IMPLICIT IA5String
DNS_NAME, IP_ADDRESS = 0x82, 0x87            # GeneralName dNSName [2] IA5String, iPAddress [7] OCTET STRING
# RFC 5280 4.2.1.6's GeneralName choices: otherName [0], rfc822Name [1], dNSName [2], x400Address [3],
# directoryName [4], ediPartyName [5], uniformResourceIdentifier [6], iPAddress [7], registeredID [8].
GENERAL_NAME_TAGS = frozenset({0xA0, 0x81, DNS_NAME, 0xA3, 0xA4, 0xA5, URI_NAME, IP_ADDRESS, 0x88})
SUBJECT_ALT_NAME = bytes([0x55, 0x1D, 0x11])  # 2.5.29.17

PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"
_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n(.*?)-----END CERTIFICATE-----", re.S)


class CertificateFormatError(ValueError):
    """The bytes are not an X.509 certificate as RFC 5280 shapes it; the message says what was wrong."""


@dataclass(frozen=True)
class CertificateFacts:
    der: bytes
    not_before: dt.datetime        # aware, UTC
    not_after: dt.datetime
    uris: tuple[str, ...]          # the URI names of the subject alternative name, in order


def _element(data: bytes, at: int, end: int) -> tuple[int, int, int]:
    """(tag, start of the content, end of the content) of the element at `at`, within `end`."""
    if at + 2 > end:
        raise CertificateFormatError(f"truncated at byte {at}")
    tag, first = data[at], data[at + 1]
    if tag & 0x1F == 0x1F:
        raise CertificateFormatError(f"a multi-byte tag at byte {at}: no field of a certificate has one")
    at += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or at + count > end:
            raise CertificateFormatError(f"bad length at byte {at - 1}")
        length = int.from_bytes(data[at:at + count], "big")
        if length < 0x80 or (count > 1 and data[at] == 0):
            raise CertificateFormatError(f"length not in DER's shortest form at byte {at - 1}")
        at += count
    if at + length > end:
        raise CertificateFormatError(f"an element at byte {at} runs past its container")
    return tag, at, at + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        element = _element(data, start, end)
        out.append(element)
        start = element[2]
    return out


def _expect(element: tuple[int, int, int], tag: int, what: str) -> tuple[int, int, int]:
    if element[0] != tag:
        raise CertificateFormatError(f"{what}: expected tag 0x{tag:02x}, found 0x{element[0]:02x}")
    return element


def _time(data: bytes, element: tuple[int, int, int]) -> dt.datetime:
    tag, start, end = element
    text = data[start:end].decode("ascii", errors="replace")
    if tag == UTC_TIME and len(text) == 13 and text.endswith("Z") and text[:12].isdigit():
        year = int(text[:2])
        text = ("19" if year >= 50 else "20") + text      # RFC 5280 4.1.2.5.1
    elif not (tag == GENERALIZED_TIME and len(text) == 15 and text.endswith("Z") and text[:14].isdigit()):
        raise CertificateFormatError(f"validity time {text!r} is neither UTCTime nor GeneralizedTime in UTC")
    try:
        return dt.datetime(int(text[:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]), int(text[10:12]),
                           int(text[12:14]), tzinfo=dt.timezone.utc)
    except ValueError as e:
        raise CertificateFormatError(f"validity time {text!r}: {e}") from None


def _uris(data: bytes, extensions: tuple[int, int, int]) -> tuple[str, ...]:
    _, start, end = _expect(_element(data, extensions[1], extensions[2]), SEQUENCE, "extensions")
    if end != extensions[2]:
        raise CertificateFormatError("bytes after the extensions")
    found: tuple[str, ...] | None = None
    for ext in _children(data, start, end):
        parts = _children(data, *_expect(ext, SEQUENCE, "extension")[1:])
        if len(parts) not in (2, 3) or parts[0][0] != OID:
            raise CertificateFormatError("an extension is not (OID, [critical,] value)")
        if len(parts) == 3 and data[parts[1][1]:parts[1][2]] != b"\xff":   # DER: TRUE is 0xff, FALSE is omitted
            _expect(parts[1], BOOLEAN, "extension criticality")
            raise CertificateFormatError("extension criticality: DER writes TRUE as 0xff and leaves FALSE out")
        value = _expect(parts[-1], OCTET_STRING, "extension value")
        if data[parts[0][1]:parts[0][2]] != SUBJECT_ALT_NAME:
            continue
        if found is not None:
            raise CertificateFormatError("two subject alternative name extensions")
        names = _expect(_element(data, value[1], value[2]), SEQUENCE, "subject alternative names")
        if names[2] != value[2]:
            raise CertificateFormatError("bytes after the subject alternative names")
        found = _names(data, names)
    return found or ()


def _names(data: bytes, names: tuple[int, int, int]) -> tuple[str, ...]:
    """The URI names of a subject alternative name's GeneralNames; each name is checked as far as its
    kind's syntax goes (an IA5String is ASCII, an IP address 4 or 16 bytes), and an empty list or a
    kind RFC 5280 does not define is refused."""
    uris = []
    children = _children(data, names[1], names[2])
    if not children:
        raise CertificateFormatError("an empty subject alternative name (RFC 5280 asks for at least one name)")
    for tag, start, end in children:
        if tag not in GENERAL_NAME_TAGS:
            raise CertificateFormatError(f"a subject alternative name of unknown kind (tag 0x{tag:02x})")
        if tag in (URI_NAME, DNS_NAME):
            try:
                text = data[start:end].decode("ascii")
            except UnicodeDecodeError:
                raise CertificateFormatError(f"a {'URI' if tag == URI_NAME else 'DNS'} name that is not ASCII "
                                             "(IA5String)") from None
            if tag == URI_NAME:
                uris.append(text)
        elif tag == IP_ADDRESS and end - start not in (4, 16):
            raise CertificateFormatError(f"an IP address name of {end - start} bytes (IPv4 has 4, IPv6 16)")
    return tuple(uris)


def read_der(der: bytes) -> CertificateFacts:
    """The facts of one DER certificate; CertificateFormatError if it is not one."""
    data = bytes(der)
    certificate = _expect(_element(data, 0, len(data)), SEQUENCE, "certificate")
    if certificate[2] != len(data):
        raise CertificateFormatError("bytes after the certificate")
    parts = _children(data, certificate[1], certificate[2])
    if len(parts) != 3:
        raise CertificateFormatError(f"a certificate has 3 parts (to-be-signed, algorithm, signature), not {len(parts)}")
    _expect(parts[1], SEQUENCE, "signature algorithm")
    _expect(parts[2], BIT_STRING, "signature")
    fields = _children(data, *_expect(parts[0], SEQUENCE, "to-be-signed certificate")[1:])
    version = 0     # v1, which DER leaves out
    if fields and fields[0][0] == VERSION_TAG:
        inner = _children(data, fields[0][1], fields[0][2])
        if len(inner) != 1 or inner[0][0] != INTEGER or data[inner[0][1]:inner[0][2]] not in (b"\x01", b"\x02"):
            raise CertificateFormatError("version: [0] holds the INTEGER 1 (v2) or 2 (v3); v1 is left out in DER")
        version = data[inner[0][1]]
        fields = fields[1:]
    if len(fields) < 6:
        raise CertificateFormatError("the to-be-signed certificate lacks fields")
    _expect(fields[0], INTEGER, "serial number")
    for index, what in ((1, "signature algorithm"), (2, "issuer"), (3, "validity"), (4, "subject"),
                        (5, "subject public key")):
        _expect(fields[index], SEQUENCE, what)
    validity = _children(data, fields[3][1], fields[3][2])
    if len(validity) != 2:
        raise CertificateFormatError("validity is not (not before, not after)")
    optional = [f[0] for f in fields[6:]]
    if any(tag not in OPTIONAL_TAGS for tag in optional) or optional != sorted(set(optional)):
        raise CertificateFormatError("after the subject public key a certificate has at most issuerUniqueID, "
                                     "subjectUniqueID and extensions, once each and in that order")
    if EXTENSIONS_TAG in optional and version != 2:
        raise CertificateFormatError(f"extensions in a v{version + 1} certificate: only v3 has them")
    uris = _uris(data, fields[-1]) if optional and optional[-1] == EXTENSIONS_TAG else ()
    return CertificateFacts(data, _time(data, validity[0]), _time(data, validity[1]), uris)


def read_pem(pem: bytes) -> list[CertificateFacts]:
    """Every CERTIFICATE block of a PEM text, in order; CertificateFormatError if one is not a certificate
    or there is none."""
    pem = bytes(pem)
    blocks = _PEM_BLOCK.findall(pem)
    if not blocks:
        raise CertificateFormatError("no PEM CERTIFICATE block found")
    begun = pem.count(PEM_BEGIN)
    if begun != len(blocks):   # a block cut short (no END line) would otherwise be skipped, or swallowed
        raise CertificateFormatError(f"{begun} BEGIN CERTIFICATE lines but {len(blocks)} whole blocks: a block "
                                     "lacks its END CERTIFICATE line (a truncated file?)")
    out = []
    for number, body in enumerate(blocks, 1):
        try:
            der = binascii.a2b_base64(body, strict_mode=False)
        except binascii.Error as e:
            raise CertificateFormatError(f"PEM block {number} is not base64: {e}") from None
        try:
            out.append(read_der(der))
        except CertificateFormatError as e:
            raise CertificateFormatError(f"PEM block {number}: {e}") from None
    return out
