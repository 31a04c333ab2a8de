"""Signed approval decisions: who approved or rejected which job, in which role, when.

A :class:`Decision` is signed by the approver (Ed25519, domain-separated from job
signatures) and names the job by its id, so it covers exactly the bytes the analyst
signed. An approval may narrow the requested quota, never widen it
(:func:`check_narrowing`); the quota a job runs under is the elementwise minimum of
the request, every approval's narrowing and the node's cap (:func:`effective_quota`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from veil.node.errors import InvalidInput, VerificationError
from veil.node.jobs._spec import (
    CANONICAL_VERSION,
    check_node_name,
    check_text,
    format_time,
    load_canonical_json,
    parse_time,
)
from veil.node.jobs._tariff import QUOTA_METERS, Quota
from veil.protocols import signing
from veil.protocols.canonical import canonical_json

DECISIONS: tuple[str, ...] = ("approve", "reject")
ROLE = re.compile(r"[a-z][a-z0-9-]{0,62}")
_JOB_ID = re.compile(r"[0-9a-f]{32}")
_KEYS = frozenset(
    {"v", "job_id", "node", "approver", "role", "decision", "reason", "quota", "time"}
)


def check_role(role: object, where: str) -> str:
    if not isinstance(role, str) or not ROLE.fullmatch(role):
        raise InvalidInput(
            f"{where}: expected a role name (lowercase letters, digits, '-'), got {role!r}"
        )
    return role


@dataclass(frozen=True)
class Decision:
    """One approver's signed word on one job at one node.

    ``quota`` (approvals only) narrows the requested quota; ``None`` leaves it as
    requested. A rejection must give a reason: the analyst reads it.
    """

    job_id: str
    node: str
    approver: str
    role: str
    decision: str
    reason: str
    quota: Quota | None
    time: datetime

    def __post_init__(self) -> None:
        if not isinstance(self.job_id, str) or not _JOB_ID.fullmatch(self.job_id):
            raise InvalidInput(f"job id: expected 32 lowercase hex digits, got {self.job_id!r}")
        check_node_name(self.node, "decision node")
        check_text(self.approver, "approver", max_len=200)
        check_role(self.role, "approver role")
        if self.decision not in DECISIONS:
            raise InvalidInput(
                f"decision: expected one of {', '.join(DECISIONS)}, got {self.decision!r}"
            )
        check_text(self.reason, "reason", max_len=2000, allow_empty=self.decision == "approve")
        if self.quota is not None:
            if not isinstance(self.quota, Quota):
                raise InvalidInput(f"decision quota: expected a Quota, got {self.quota!r}")
            if self.decision == "reject":
                raise InvalidInput("decision quota: a rejection cannot carry a quota")
        if not isinstance(self.time, datetime) or self.time.tzinfo is None:
            raise InvalidInput(
                f"decision time: expected a time with a UTC offset, got {self.time!r}"
            )
        object.__setattr__(self, "time", self.time.astimezone(UTC))


def _to_json_obj(d: Decision) -> dict[str, Any]:
    return {
        "v": CANONICAL_VERSION,
        "job_id": d.job_id,
        "node": d.node,
        "approver": d.approver,
        "role": d.role,
        "decision": d.decision,
        "reason": d.reason,
        "quota": None if d.quota is None else d.quota.to_dict(),
        "time": format_time(d.time),
    }


def decision_bytes(d: Decision) -> bytes:
    """Canonical JSON (sorted keys, no whitespace, UTF-8, ``"v": 1``) of a decision."""
    return canonical_json(_to_json_obj(d))


def decision_from_canonical(data: bytes) -> Decision:
    """Strict inverse of :func:`decision_bytes`."""
    obj = load_canonical_json(data, "decision")
    if obj.get("v") != CANONICAL_VERSION or set(obj) != _KEYS:
        raise InvalidInput(
            f"decision: expected version {CANONICAL_VERSION} with exactly the keys "
            f"{', '.join(sorted(_KEYS))}, got {', '.join(sorted(obj))}"
        )
    d = Decision(
        job_id=obj["job_id"],
        node=obj["node"],
        approver=obj["approver"],
        role=obj["role"],
        decision=obj["decision"],
        reason=obj["reason"],
        quota=None if obj["quota"] is None else Quota.from_dict(obj["quota"]),
        time=parse_time(obj["time"], "decision time"),
    )
    if decision_bytes(d) != bytes(data):
        raise InvalidInput("decision: bytes are valid but not in canonical form")
    return d


@dataclass(frozen=True)
class SignedDecision:
    canonical: bytes
    signature: bytes = field(repr=False)


def sign_decision(d: Decision, private_key: Ed25519PrivateKey) -> SignedDecision:
    canonical = decision_bytes(d)
    return SignedDecision(canonical, signing.sign(private_key, signing.DECISION, canonical))


def verify_decision(canonical: bytes, signature: bytes, public_key: Ed25519PublicKey) -> Decision:
    """Check the approver's signature, then decode; VerificationError on any mismatch."""
    try:
        signing.verify(public_key, signing.DECISION, canonical, signature)
    except signing.SignatureInvalid:
        raise VerificationError(
            "decision signature does not verify with the approver's key: the decision was "
            "altered after signing or signed by someone else"
        ) from None
    return decision_from_canonical(bytes(canonical))


def check_narrowing(requested: Quota, proposed: Quota) -> None:
    """Refuse an approval quota that widens any meter beyond what the job requested.

    ``None`` in ``proposed`` means "as requested" (it adds no cap, so cannot widen).
    Narrowing runs to 0 is refused too: to stop a job, reject it.
    """
    for name in QUOTA_METERS:
        asked, offered = getattr(requested, name), getattr(proposed, name)
        if offered is None:
            continue
        if asked is not None and offered > asked:
            raise InvalidInput(
                f"approval quota widens {name}: the job requested {asked}, the approval "
                f"gives {offered}; an approval may only narrow a quota"
            )
    for name in QUOTA_METERS:  # the job file's rule: a cap is at least 1
        if getattr(proposed, name) == 0:
            raise InvalidInput(f"approval quota: {name} = 0 would approve nothing; reject the "
                               "job instead")


def effective_quota(
    requested: Quota, approvals: Sequence[Decision], node_max: Quota | None
) -> Quota:
    """Elementwise minimum of the request, every approval's narrowing and the node's cap."""
    quota = requested
    for d in approvals:
        if d.decision == "approve":
            quota = quota.min(d.quota)
    return quota.min(node_max)
