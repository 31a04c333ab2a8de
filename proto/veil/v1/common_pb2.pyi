from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Level(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LEVEL_UNSPECIFIED: _ClassVar[Level]
    LEVEL_PUBLIC: _ClassVar[Level]
    LEVEL_INTERNAL: _ClassVar[Level]
    LEVEL_SENSITIVE: _ClassVar[Level]
    LEVEL_CORE: _ClassVar[Level]
LEVEL_UNSPECIFIED: Level
LEVEL_PUBLIC: Level
LEVEL_INTERNAL: Level
LEVEL_SENSITIVE: Level
LEVEL_CORE: Level

class Receipt(_message.Message):
    __slots__ = ("log_index", "checkpoint", "node_vkey")
    LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    NODE_VKEY_FIELD_NUMBER: _ClassVar[int]
    log_index: int
    checkpoint: str
    node_vkey: str
    def __init__(self, log_index: _Optional[int] = ..., checkpoint: _Optional[str] = ..., node_vkey: _Optional[str] = ...) -> None: ...

class Meters(_message.Message):
    __slots__ = ("runs", "rows_scanned", "result_rows", "items", "ciphertexts", "cpu_ms", "bytes_out")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    ROWS_SCANNED_FIELD_NUMBER: _ClassVar[int]
    RESULT_ROWS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    CPU_MS_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    runs: int
    rows_scanned: int
    result_rows: int
    items: int
    ciphertexts: int
    cpu_ms: int
    bytes_out: int
    def __init__(self, runs: _Optional[int] = ..., rows_scanned: _Optional[int] = ..., result_rows: _Optional[int] = ..., items: _Optional[int] = ..., ciphertexts: _Optional[int] = ..., cpu_ms: _Optional[int] = ..., bytes_out: _Optional[int] = ...) -> None: ...

class NodeReceipt(_message.Message):
    __slots__ = ("node", "receipt")
    NODE_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    node: str
    receipt: Receipt
    def __init__(self, node: _Optional[str] = ..., receipt: _Optional[_Union[Receipt, _Mapping]] = ...) -> None: ...

class DpBudget(_message.Message):
    __slots__ = ("dataset", "measure", "total", "spent", "remaining", "period_start", "period_end", "max_per_run")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    MEASURE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_RUN_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    measure: str
    total: str
    spent: str
    remaining: str
    period_start: str
    period_end: str
    max_per_run: str
    def __init__(self, dataset: _Optional[str] = ..., measure: _Optional[str] = ..., total: _Optional[str] = ..., spent: _Optional[str] = ..., remaining: _Optional[str] = ..., period_start: _Optional[str] = ..., period_end: _Optional[str] = ..., max_per_run: _Optional[str] = ...) -> None: ...
