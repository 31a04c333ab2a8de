from veil.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunPsiRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class PsiProgress(_message.Message):
    __slots__ = ("done", "total")
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    done: int
    total: int
    def __init__(self, done: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class PsiDataset(_message.Message):
    __slots__ = ("node", "dataset", "version", "sha256", "rows", "log_index")
    NODE_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    node: str
    dataset: str
    version: int
    sha256: str
    rows: int
    log_index: int
    def __init__(self, node: _Optional[str] = ..., dataset: _Optional[str] = ..., version: _Optional[int] = ..., sha256: _Optional[str] = ..., rows: _Optional[int] = ..., log_index: _Optional[int] = ...) -> None: ...

class PsiResult(_message.Message):
    __slots__ = ("run_id", "cardinality", "set_size", "peer_set_size", "sums", "datasets", "receipts", "meters")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CARDINALITY_FIELD_NUMBER: _ClassVar[int]
    SET_SIZE_FIELD_NUMBER: _ClassVar[int]
    PEER_SET_SIZE_FIELD_NUMBER: _ClassVar[int]
    SUMS_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    METERS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    cardinality: int
    set_size: int
    peer_set_size: int
    sums: _containers.RepeatedScalarFieldContainer[bytes]
    datasets: _containers.RepeatedCompositeFieldContainer[PsiDataset]
    receipts: _containers.RepeatedCompositeFieldContainer[_common_pb2.NodeReceipt]
    meters: _common_pb2.Meters
    def __init__(self, run_id: _Optional[str] = ..., cardinality: _Optional[int] = ..., set_size: _Optional[int] = ..., peer_set_size: _Optional[int] = ..., sums: _Optional[_Iterable[bytes]] = ..., datasets: _Optional[_Iterable[_Union[PsiDataset, _Mapping]]] = ..., receipts: _Optional[_Iterable[_Union[_common_pb2.NodeReceipt, _Mapping]]] = ..., meters: _Optional[_Union[_common_pb2.Meters, _Mapping]] = ...) -> None: ...

class PsiUpdate(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: PsiProgress
    result: PsiResult
    def __init__(self, progress: _Optional[_Union[PsiProgress, _Mapping]] = ..., result: _Optional[_Union[PsiResult, _Mapping]] = ...) -> None: ...

class PsiMessage(_message.Message):
    __slots__ = ("job_id", "hello", "mine", "theirs", "counted", "finish", "done")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    MINE_FIELD_NUMBER: _ClassVar[int]
    THEIRS_FIELD_NUMBER: _ClassVar[int]
    COUNTED_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    hello: PsiHello
    mine: PsiPoints
    theirs: PsiPoints
    counted: PsiCount
    finish: PsiFinish
    done: PsiDone
    def __init__(self, job_id: _Optional[str] = ..., hello: _Optional[_Union[PsiHello, _Mapping]] = ..., mine: _Optional[_Union[PsiPoints, _Mapping]] = ..., theirs: _Optional[_Union[PsiPoints, _Mapping]] = ..., counted: _Optional[_Union[PsiCount, _Mapping]] = ..., finish: _Optional[_Union[PsiFinish, _Mapping]] = ..., done: _Optional[_Union[PsiDone, _Mapping]] = ...) -> None: ...

class PsiHello(_message.Message):
    __slots__ = ("run_id", "set_size")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SET_SIZE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    set_size: int
    def __init__(self, run_id: _Optional[str] = ..., set_size: _Optional[int] = ...) -> None: ...

class PsiPoints(_message.Message):
    __slots__ = ("points", "values")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    points: bytes
    values: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, points: _Optional[bytes] = ..., values: _Optional[_Iterable[bytes]] = ...) -> None: ...

class PsiCount(_message.Message):
    __slots__ = ("cardinality",)
    CARDINALITY_FIELD_NUMBER: _ClassVar[int]
    cardinality: int
    def __init__(self, cardinality: _Optional[int] = ...) -> None: ...

class PsiFinish(_message.Message):
    __slots__ = ("release", "cardinality", "reason")
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    CARDINALITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    release: bool
    cardinality: int
    reason: str
    def __init__(self, release: _Optional[bool] = ..., cardinality: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class PsiDone(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: PsiDataset
    def __init__(self, dataset: _Optional[_Union[PsiDataset, _Mapping]] = ...) -> None: ...
