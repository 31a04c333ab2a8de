from veil.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetStatementRequest(_message.Message):
    __slots__ = ("analyst", "from_time", "to_time")
    ANALYST_FIELD_NUMBER: _ClassVar[int]
    FROM_TIME_FIELD_NUMBER: _ClassVar[int]
    TO_TIME_FIELD_NUMBER: _ClassVar[int]
    analyst: str
    from_time: str
    to_time: str
    def __init__(self, analyst: _Optional[str] = ..., from_time: _Optional[str] = ..., to_time: _Optional[str] = ...) -> None: ...

class StatementLine(_message.Message):
    __slots__ = ("log_index", "time", "job_id", "method", "meters", "amount", "dp_dataset", "dp_measure", "dp_spent")
    LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    METERS_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    DP_DATASET_FIELD_NUMBER: _ClassVar[int]
    DP_MEASURE_FIELD_NUMBER: _ClassVar[int]
    DP_SPENT_FIELD_NUMBER: _ClassVar[int]
    log_index: int
    time: str
    job_id: str
    method: str
    meters: _common_pb2.Meters
    amount: str
    dp_dataset: str
    dp_measure: str
    dp_spent: str
    def __init__(self, log_index: _Optional[int] = ..., time: _Optional[str] = ..., job_id: _Optional[str] = ..., method: _Optional[str] = ..., meters: _Optional[_Union[_common_pb2.Meters, _Mapping]] = ..., amount: _Optional[str] = ..., dp_dataset: _Optional[str] = ..., dp_measure: _Optional[str] = ..., dp_spent: _Optional[str] = ...) -> None: ...

class Statement(_message.Message):
    __slots__ = ("node", "analyst", "currency", "lines", "total", "budgets")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ANALYST_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    node: str
    analyst: str
    currency: str
    lines: _containers.RepeatedCompositeFieldContainer[StatementLine]
    total: str
    budgets: _containers.RepeatedCompositeFieldContainer[_common_pb2.DpBudget]
    def __init__(self, node: _Optional[str] = ..., analyst: _Optional[str] = ..., currency: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[StatementLine, _Mapping]]] = ..., total: _Optional[str] = ..., budgets: _Optional[_Iterable[_Union[_common_pb2.DpBudget, _Mapping]]] = ...) -> None: ...
