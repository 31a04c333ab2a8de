"""Veil's exceptions: one root, a few meaningful kinds, each able to explain itself.

Every error a user or a peer can cause is a :class:`VeilError`. The gRPC layer maps
each subclass to one status code (``node/_rpc.py``); the CLI catches only the root
and exits non-zero with the message. Anything else that escapes is a bug in Veil.
"""

from __future__ import annotations

from typing import Any


class VeilError(Exception):
    """Root of every error a user, an operator or a peer can cause."""

    #: name of the grpc.StatusCode this error maps to on the wire
    status: str = "INVALID_ARGUMENT"
    #: for a node's refusal seen by a client: where the node logged it (a CallReceipt)
    receipt: Any = None


class InvalidInput(VeilError):
    """The request, file or argument is malformed or inconsistent."""

    status = "INVALID_ARGUMENT"


class NotFound(VeilError):
    status = "NOT_FOUND"


class AlreadyExists(VeilError):
    status = "ALREADY_EXISTS"


class Unauthenticated(VeilError):
    """The caller could not be identified (no, expired, revoked or foreign certificate)."""

    status = "UNAUTHENTICATED"


class PolicyDenied(VeilError):
    """The caller is known but not allowed to do this (role, deny list, classification)."""

    status = "PERMISSION_DENIED"


class ApprovalRequired(VeilError):
    """The job exists but is not (or no longer) in a state that lets it run."""

    status = "FAILED_PRECONDITION"


class FailedPrecondition(VeilError):
    status = "FAILED_PRECONDITION"


class Unimplemented(VeilError):
    """The request is well-formed but asks for something this node does not do (yet)."""

    status = "UNIMPLEMENTED"


class QuotaExhausted(VeilError):
    status = "RESOURCE_EXHAUSTED"

    def __init__(self, meter: str, requested: int, remaining: int) -> None:
        self.meter, self.requested, self.remaining = meter, requested, remaining
        super().__init__(
            f"quota exhausted for {meter}: requested {requested}, remaining {remaining}"
        )


#: how a budget refusal's message starts (the client tells it from other RESOURCE_EXHAUSTED)
BUDGET_EXHAUSTED = "differential-privacy budget exhausted"


class BudgetExhausted(VeilError):
    """An analyst's differential-privacy budget on a dataset has less left than a run spends."""

    status = "RESOURCE_EXHAUSTED"


class ResourceLimit(VeilError):
    """A per-call limit (time, memory, result size) was hit."""

    status = "RESOURCE_EXHAUSTED"


class ProtocolError(VeilError):
    """A peer sent a malformed or out-of-order protocol message."""

    status = "INVALID_ARGUMENT"


class VerificationError(VeilError):
    """A signature, proof, receipt or log failed verification.

    On the wire (a forged or altered signed request) this is INVALID_ARGUMENT.
    """

    status = "INVALID_ARGUMENT"


class ConfigError(VeilError):
    """node.toml, a key file or a directory is missing or wrong."""

    status = "FAILED_PRECONDITION"


_BY_STATUS: dict[str, type[VeilError]] = {
    "INVALID_ARGUMENT": InvalidInput,
    "NOT_FOUND": NotFound,
    "ALREADY_EXISTS": AlreadyExists,
    "UNAUTHENTICATED": Unauthenticated,
    "PERMISSION_DENIED": PolicyDenied,
    "FAILED_PRECONDITION": FailedPrecondition,
    "RESOURCE_EXHAUSTED": ResourceLimit,
    "UNIMPLEMENTED": Unimplemented,
}


class RemoteError(VeilError):
    """A node refused or failed a call; ``status`` is the gRPC status it answered with."""

    def __init__(self, status: str, message: str, node: str) -> None:
        self.status = status
        self.node = node
        super().__init__(f"{node}: {status}: {message}")


def remote_error(status: str, message: str, node: str) -> VeilError:
    """Rebuild a node's refusal on the client side, keeping its kind where we know it."""
    kind = _BY_STATUS.get(status)
    if status == BudgetExhausted.status and message.startswith(BUDGET_EXHAUSTED):
        kind = BudgetExhausted  # one status, two kinds: the budget's refusal says which
    if kind is None:
        if status == "UNAVAILABLE":
            message += " (is the node running at that address, and does it trust your CA?)"
        return RemoteError(status, message, node)
    return kind(f"{node}: {status}: {message}")
