from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class SignRequest(_message.Message):
    __slots__ = ("csr", "identity", "ttl_seconds")
    CSR_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    csr: str
    identity: str
    ttl_seconds: int
    def __init__(self, csr: _Optional[str] = ..., identity: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class SignResponse(_message.Message):
    __slots__ = ("chain", "bundle", "not_after")
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    chain: str
    bundle: str
    not_after: int
    def __init__(self, chain: _Optional[str] = ..., bundle: _Optional[str] = ..., not_after: _Optional[int] = ...) -> None: ...
