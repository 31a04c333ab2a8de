"""Bounds on everything a caller controls: what may enter the log, a trailer or a lookup.

The log is append-only, so one unbounded field is forever: an entry too large to send
locks every remote auditor out. Hence, in this order of defence:

1. each method has a request size limit (:func:`request_limit`), checked by the gate
   before parsing, so the refusal is logged like any other; grpc's own receive limit
   (:data:`GRPC_MAX_RECEIVE`) sits above the largest of ours, so such a body reaches the gate;
2. ids and names are checked for length and alphabet (:func:`check_request`) before any
   lookup, with a precise INVALID_ARGUMENT;
3. a caller's text is echoed in a message or detail only through :func:`echo`: a short
   prefix and a digest of the whole; a status message never exceeds
   :data:`MAX_STATUS_MESSAGE` (:func:`status_message`), so its trailer always fits;
4. the log itself refuses to store an entry over :data:`MAX_ENTRY_BYTES`: it stores a
   bounded refusal record in its place (``node/log.py``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from veil.node.errors import InvalidInput, ResourceLimit

KIB = 1024

#: no entry is ever larger than this (canonical JSON bytes)
MAX_ENTRY_BYTES = 64 * KIB
#: a GetEntries batch stops growing once it holds this many bytes of entries
ENTRY_BATCH_BYTES = 256 * KIB
#: grpc's default metadata limit is 8 KiB for all headers/trailers together; the status
#: message shares it with the receipt (a signed checkpoint, a few hundred bytes)
MAX_STATUS_MESSAGE = 2 * KIB
#: how many characters of a caller's text an echo keeps
ECHO_PREFIX = 32

#: per-method request limits (serialized bytes); a method not named here gets the default
DEFAULT_REQUEST_LIMIT = 64 * KIB
REQUEST_LIMITS: dict[str, int] = {
    "/veil.v1.JobService/SubmitJob": 1024 * KIB,
    "/veil.v1.JobService/DecideJob": 256 * KIB,
    # one signed mask key, certificate included (~1.5 KiB), per node of the largest job
    "/veil.v1.PeerService/ContributeSum": 256 * KIB,
    # one batch of points (128 KiB), or of points with their encrypted values
    "/veil.v1.PeerService/ExchangePsi": 1024 * KIB,
}
#: grpc's receive limit on server and client: above every limit of ours (so an oversize
#: request reaches the gate and is logged) and above every response a node sends
GRPC_MAX_RECEIVE = 16 * 1024 * KIB


def request_limit(method: str) -> int:
    """The largest request body, in bytes, that ``method`` (``/pkg.Service/Method``) takes."""
    return REQUEST_LIMITS.get(method, DEFAULT_REQUEST_LIMIT)


class RequestTooLarge(ResourceLimit):
    def __init__(self, method: str, size: int, limit: int) -> None:
        super().__init__(
            f"request to {method} is {size} bytes; the limit for this method is {limit} bytes"
        )


def check_size(method: str, raw: bytes) -> None:
    limit = request_limit(method)
    if len(raw) > limit:
        raise RequestTooLarge(method, len(raw), limit)


def echo(value: str | bytes, prefix: int = ECHO_PREFIX) -> str:
    """A caller's text as it may appear in a message or a log entry.

    Short text is quoted whole; longer text as its first ``prefix`` characters, its length
    and the SHA-256 of the whole, so an auditor can still match it against a request.
    """
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if len(text) <= prefix:
        return repr(text)
    raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
    digest = hashlib.sha256(raw).hexdigest()
    return f"{text[:prefix]!r}… ({len(text)} characters, sha256 {digest})"


def status_message(message: str) -> str:
    """``message`` cut to :data:`MAX_STATUS_MESSAGE` UTF-8 bytes, saying that it was cut."""
    data = message.encode("utf-8", "replace")
    if len(data) <= MAX_STATUS_MESSAGE:
        return message
    cut = data[: MAX_STATUS_MESSAGE - 64].decode("utf-8", "ignore")
    return f"{cut}… (message cut from {len(data)} bytes)"


# ------------------------------------------------------------------ ids and names


@dataclass(frozen=True)
class Shape:
    """What an id or a name must look like."""

    what: str
    pattern: re.Pattern[str]
    expected: str
    optional: bool = False  # empty means "no filter"


JOB_ID = Shape("job id", re.compile(r"[0-9a-f]{32}"), "32 lowercase hex digits")
RUN_ID = Shape("run id", re.compile(r"[0-9a-f]{32}"), "32 lowercase hex digits")
DATASET = Shape("dataset name", re.compile(r"[a-z_][a-z0-9_]{0,62}"),
                "1 to 63 of a-z, 0-9 and _, not starting with a digit")
PERSON = r"[A-Za-z0-9._-]{1,64}"
ANALYST_FILTER = Shape("analyst name", re.compile(PERSON),
                       "1 to 64 of A-Z, a-z, 0-9, '.', '_' and '-'", optional=True)
STATE_FILTER = Shape("job state", re.compile(r"[a-z]{1,16}"), "a job state such as pending",
                     optional=True)

#: ``message full name -> field -> shape`` of every id and name a request carries
FIELDS: dict[str, dict[str, Shape]] = {
    "veil.v1.GetDatasetRequest": {"name": DATASET},
    "veil.v1.GetJobRequest": {"job_id": JOB_ID},
    "veil.v1.RevokeJobRequest": {"job_id": JOB_ID},
    "veil.v1.RunQueryRequest": {"job_id": JOB_ID},
    "veil.v1.RunSumRequest": {"job_id": JOB_ID},
    "veil.v1.PrepareSumRequest": {"job_id": JOB_ID, "run_id": RUN_ID},
    "veil.v1.ContributeSumRequest": {"job_id": JOB_ID, "run_id": RUN_ID},
    "veil.v1.ListJobsRequest": {"analyst": ANALYST_FILTER, "state": STATE_FILTER},
    "veil.v1.GetStatementRequest": {"analyst": ANALYST_FILTER},
}
#: free text a request may carry (a reason), bounded in characters
TEXT_LIMITS: dict[str, dict[str, int]] = {
    "veil.v1.RevokeJobRequest": {"reason": 1000},
    "veil.v1.GetStatementRequest": {"from_time": 64, "to_time": 64},
}


def check_field(shape: Shape, value: str) -> None:
    if shape.optional and value == "":
        return
    if not shape.pattern.fullmatch(value):
        raise InvalidInput(f"{shape.what} must be {shape.expected}, got {echo(value)}")


def check_request(request: Any) -> None:
    """Every id and name in ``request`` has the right length and alphabet; every free text
    its bound. Runs before any lookup, so a refusal never echoes a huge value."""
    name = request.DESCRIPTOR.full_name
    for field, shape in FIELDS.get(name, {}).items():
        check_field(shape, getattr(request, field))
    for field, limit in TEXT_LIMITS.get(name, {}).items():
        value = getattr(request, field)
        if len(value) > limit:
            raise InvalidInput(f"{field} is {len(value)} characters; at most {limit} are kept")


# ------------------------------------------------------------------ who presented what


def presented(cert_pem: bytes, revoked: frozenset[int]) -> dict[str, Any] | None:
    """The identity a refused certificate claims, bounded, for the log: role, name,
    fingerprint and whether it was revoked. None if it is not a certificate at all."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except (ValueError, TypeError):
        return None

    def attr(oid: x509.ObjectIdentifier) -> str:
        values = cert.subject.get_attributes_for_oid(oid)
        value = values[0].value if values else ""
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        return text if len(text) <= 64 else echo(text)

    return {
        "role": attr(NameOID.ORGANIZATIONAL_UNIT_NAME),
        "name": attr(NameOID.COMMON_NAME),
        "fingerprint": cert.fingerprint(hashes.SHA256()).hex(),
        "revoked": cert.serial_number in revoked,
        "authenticated": False,
    }


def bound_record(record: dict[str, Any]) -> dict[str, Any]:
    """A call record with its message and details cut to size (the gate's record)."""
    out = dict(record)
    if "message" in out:
        out["message"] = status_message(str(out["message"]))
    if "details" in out:
        encoded = repr(out["details"])
        if len(encoded) > MAX_ENTRY_BYTES // 4:
            out["details"] = {"omitted": echo(encoded)}
    return out
