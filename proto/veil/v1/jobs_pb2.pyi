from veil.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SignedJob(_message.Message):
    __slots__ = ("canonical", "signature")
    CANONICAL_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    canonical: bytes
    signature: bytes
    def __init__(self, canonical: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SignedDecision(_message.Message):
    __slots__ = ("canonical", "signature")
    CANONICAL_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    canonical: bytes
    signature: bytes
    def __init__(self, canonical: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("analyst", "state")
    ANALYST_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    analyst: str
    state: str
    def __init__(self, analyst: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class RevokeJobRequest(_message.Message):
    __slots__ = ("job_id", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Approval(_message.Message):
    __slots__ = ("approver", "role", "decision", "reason", "time")
    APPROVER_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    approver: str
    role: str
    decision: str
    reason: str
    time: str
    def __init__(self, approver: _Optional[str] = ..., role: _Optional[str] = ..., decision: _Optional[str] = ..., reason: _Optional[str] = ..., time: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "analyst", "kind", "purpose", "state", "canonical", "required_roles", "missing_roles", "approvals", "quota", "used", "expires", "revoked_reason", "estimate_json")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ANALYST_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CANONICAL_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_ROLES_FIELD_NUMBER: _ClassVar[int]
    MISSING_ROLES_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    REVOKED_REASON_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_JSON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    analyst: str
    kind: str
    purpose: str
    state: str
    canonical: bytes
    required_roles: _containers.RepeatedScalarFieldContainer[str]
    missing_roles: _containers.RepeatedScalarFieldContainer[str]
    approvals: _containers.RepeatedCompositeFieldContainer[Approval]
    quota: _common_pb2.Meters
    used: _common_pb2.Meters
    expires: str
    revoked_reason: str
    estimate_json: str
    def __init__(self, job_id: _Optional[str] = ..., analyst: _Optional[str] = ..., kind: _Optional[str] = ..., purpose: _Optional[str] = ..., state: _Optional[str] = ..., canonical: _Optional[bytes] = ..., required_roles: _Optional[_Iterable[str]] = ..., missing_roles: _Optional[_Iterable[str]] = ..., approvals: _Optional[_Iterable[_Union[Approval, _Mapping]]] = ..., quota: _Optional[_Union[_common_pb2.Meters, _Mapping]] = ..., used: _Optional[_Union[_common_pb2.Meters, _Mapping]] = ..., expires: _Optional[str] = ..., revoked_reason: _Optional[str] = ..., estimate_json: _Optional[str] = ...) -> None: ...
