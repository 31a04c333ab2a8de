from veil.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunQueryRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ResultColumn(_message.Message):
    __slots__ = ("name", "type", "doubles", "ints", "strings", "nulls")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DOUBLES_FIELD_NUMBER: _ClassVar[int]
    INTS_FIELD_NUMBER: _ClassVar[int]
    STRINGS_FIELD_NUMBER: _ClassVar[int]
    NULLS_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    doubles: _containers.RepeatedScalarFieldContainer[float]
    ints: _containers.RepeatedScalarFieldContainer[int]
    strings: _containers.RepeatedScalarFieldContainer[str]
    nulls: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., doubles: _Optional[_Iterable[float]] = ..., ints: _Optional[_Iterable[int]] = ..., strings: _Optional[_Iterable[str]] = ..., nulls: _Optional[_Iterable[bool]] = ...) -> None: ...

class QueryResult(_message.Message):
    __slots__ = ("columns", "rows", "suppressed_groups", "meters", "result_sha256", "dataset_versions", "dp", "budget")
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_GROUPS_FIELD_NUMBER: _ClassVar[int]
    METERS_FIELD_NUMBER: _ClassVar[int]
    RESULT_SHA256_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    DP_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    columns: _containers.RepeatedCompositeFieldContainer[ResultColumn]
    rows: int
    suppressed_groups: int
    meters: _common_pb2.Meters
    result_sha256: str
    dataset_versions: _containers.RepeatedScalarFieldContainer[str]
    dp: _containers.RepeatedCompositeFieldContainer[DpRelease]
    budget: _common_pb2.DpBudget
    def __init__(self, columns: _Optional[_Iterable[_Union[ResultColumn, _Mapping]]] = ..., rows: _Optional[int] = ..., suppressed_groups: _Optional[int] = ..., meters: _Optional[_Union[_common_pb2.Meters, _Mapping]] = ..., result_sha256: _Optional[str] = ..., dataset_versions: _Optional[_Iterable[str]] = ..., dp: _Optional[_Iterable[_Union[DpRelease, _Mapping]]] = ..., budget: _Optional[_Union[_common_pb2.DpBudget, _Mapping]] = ...) -> None: ...

class DpRelease(_message.Message):
    __slots__ = ("measurement", "columns", "mechanism", "measure", "spent", "scale", "std", "ci95")
    MEASUREMENT_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    MEASURE_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    CI95_FIELD_NUMBER: _ClassVar[int]
    measurement: str
    columns: _containers.RepeatedScalarFieldContainer[str]
    mechanism: str
    measure: str
    spent: str
    scale: float
    std: float
    ci95: float
    def __init__(self, measurement: _Optional[str] = ..., columns: _Optional[_Iterable[str]] = ..., mechanism: _Optional[str] = ..., measure: _Optional[str] = ..., spent: _Optional[str] = ..., scale: _Optional[float] = ..., std: _Optional[float] = ..., ci95: _Optional[float] = ...) -> None: ...
