from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("name", "federation", "version", "certificate_pem", "log_vkey", "log_origin", "job_kinds", "caller_role", "caller_name")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FEDERATION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    LOG_VKEY_FIELD_NUMBER: _ClassVar[int]
    LOG_ORIGIN_FIELD_NUMBER: _ClassVar[int]
    JOB_KINDS_FIELD_NUMBER: _ClassVar[int]
    CALLER_ROLE_FIELD_NUMBER: _ClassVar[int]
    CALLER_NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    federation: str
    version: str
    certificate_pem: str
    log_vkey: str
    log_origin: str
    job_kinds: _containers.RepeatedScalarFieldContainer[str]
    caller_role: str
    caller_name: str
    def __init__(self, name: _Optional[str] = ..., federation: _Optional[str] = ..., version: _Optional[str] = ..., certificate_pem: _Optional[str] = ..., log_vkey: _Optional[str] = ..., log_origin: _Optional[str] = ..., job_kinds: _Optional[_Iterable[str]] = ..., caller_role: _Optional[str] = ..., caller_name: _Optional[str] = ...) -> None: ...
