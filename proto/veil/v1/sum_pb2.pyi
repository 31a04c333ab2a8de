from veil.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunSumRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class PrepareSumRequest(_message.Message):
    __slots__ = ("job_id", "run_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    run_id: str
    def __init__(self, job_id: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class MaskKey(_message.Message):
    __slots__ = ("node", "statement", "signature", "certificate_pem")
    NODE_FIELD_NUMBER: _ClassVar[int]
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    node: str
    statement: bytes
    signature: bytes
    certificate_pem: str
    def __init__(self, node: _Optional[str] = ..., statement: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., certificate_pem: _Optional[str] = ...) -> None: ...

class ContributeSumRequest(_message.Message):
    __slots__ = ("job_id", "run_id", "mask_keys")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MASK_KEYS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    run_id: str
    mask_keys: _containers.RepeatedCompositeFieldContainer[MaskKey]
    def __init__(self, job_id: _Optional[str] = ..., run_id: _Optional[str] = ..., mask_keys: _Optional[_Iterable[_Union[MaskKey, _Mapping]]] = ...) -> None: ...

class SumPart(_message.Message):
    __slots__ = ("node", "sums", "counts", "withheld")
    NODE_FIELD_NUMBER: _ClassVar[int]
    SUMS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    WITHHELD_FIELD_NUMBER: _ClassVar[int]
    node: str
    sums: _containers.RepeatedScalarFieldContainer[bytes]
    counts: _containers.RepeatedScalarFieldContainer[bytes]
    withheld: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, node: _Optional[str] = ..., sums: _Optional[_Iterable[bytes]] = ..., counts: _Optional[_Iterable[bytes]] = ..., withheld: _Optional[_Iterable[bytes]] = ...) -> None: ...

class SumResult(_message.Message):
    __slots__ = ("run_id", "sums", "counts", "withheld", "receipts", "meters")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SUMS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    WITHHELD_FIELD_NUMBER: _ClassVar[int]
    RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    METERS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    sums: _containers.RepeatedScalarFieldContainer[bytes]
    counts: _containers.RepeatedScalarFieldContainer[bytes]
    withheld: _containers.RepeatedScalarFieldContainer[bytes]
    receipts: _containers.RepeatedCompositeFieldContainer[_common_pb2.NodeReceipt]
    meters: _common_pb2.Meters
    def __init__(self, run_id: _Optional[str] = ..., sums: _Optional[_Iterable[bytes]] = ..., counts: _Optional[_Iterable[bytes]] = ..., withheld: _Optional[_Iterable[bytes]] = ..., receipts: _Optional[_Iterable[_Union[_common_pb2.NodeReceipt, _Mapping]]] = ..., meters: _Optional[_Union[_common_pb2.Meters, _Mapping]] = ...) -> None: ...
