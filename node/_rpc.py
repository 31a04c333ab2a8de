"""Every RPC goes through one wrapper: authenticate, authorize, parse, handle, log, release.

Servicers stay thin: a method is a plain handler ``(request, call) -> response`` plus
the roles allowed to call it. This module does the rest, in the order DESIGN.md
gives for one call:

1. identify the caller from its client certificate (federation CA, validity, CRL, role);
2. check the caller's role for the method and the node's deny list;
3. parse the request ourselves, so a truncated or garbage message is logged and
   answered ``INVALID_ARGUMENT`` instead of grpcio's bare ``INTERNAL``;
4. run the handler (which may add job, datasets, meters and a transactional effect);
5. append the log entry — allowed or denied, success or failure — durably, and
   only then release the answer, with the receipt in trailing metadata.

Domain errors map to status codes here and only here (``VeilError.status``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError, Message

from veil.node.errors import PolicyDenied, Unauthenticated, VeilError
from veil.node.log import Effect, Log, Receipt
from veil.node.pki import Identity, TrustStore

log = logging.getLogger("veil.rpc")

TRAILER_INDEX = "veil-log-index"
TRAILER_CHECKPOINT = "veil-checkpoint-bin"


@dataclass
class Call:
    """What the wrapper knows about one invocation; handlers fill in the rest."""

    method: str
    request_sha256: str
    identity: Identity
    job_id: str | None = None
    datasets: list[str] = field(default_factory=list)
    meters: dict[str, int] | None = None
    result_sha256: str | None = None
    #: runs inside the log entry's transaction when the call succeeds (charging quota)
    effect: Effect | None = None
    #: extra, value-free facts for the entry (e.g. a revocation reason)
    details: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[Any, Call], Any]


@dataclass(frozen=True)
class Method:
    name: str
    request: type[Message]
    response: type[Message]
    roles: frozenset[str]
    handler: Handler
    streaming: bool = False


def abort(context: grpc.ServicerContext, error: VeilError) -> NoReturn:
    context.abort(getattr(grpc.StatusCode, error.status), str(error))
    raise AssertionError("unreachable")  # context.abort raises


class Gate:
    """Authentication, authorization and logging shared by every service."""

    def __init__(self, trust: TrustStore, log_: Log, deny: Callable[[Identity], str | None]):
        self.trust = trust
        self.log = log_
        self.deny = deny

    def authenticate(self, context: grpc.ServicerContext) -> Identity:
        auth = context.auth_context()
        pems = auth.get("x509_pem_cert")
        if not pems:
            raise Unauthenticated(
                "client certificate required: connect with a certificate issued by the "
                "federation CA (`veil pki issue`)"
            )
        try:
            self.trust.reload()  # a stat per call; re-reads the CRL when it changed
        except VeilError as exc:
            log.warning("keeping the CRL in force: %s", exc)
        return self.trust.identify(pems[0])

    def service(self, service_name: str, methods: Iterable[Method]) -> grpc.GenericRpcHandler:
        handlers = {}
        for m in methods:
            full = f"/{service_name}/{m.name}"
            if m.streaming:
                handlers[m.name] = grpc.unary_stream_rpc_method_handler(
                    self._streaming(full, m), response_serializer=m.response.SerializeToString
                )
            else:
                handlers[m.name] = grpc.unary_unary_rpc_method_handler(
                    self._unary(full, m), response_serializer=m.response.SerializeToString
                )
        return grpc.method_handlers_generic_handler(service_name, handlers)

    def _admit(self, call: Call, m: Method, raw: bytes, context: grpc.ServicerContext) -> Any:
        """Identify and authorize the caller (recorded on ``call``), then parse."""
        full = call.method
        call.identity = self.authenticate(context)
        if call.identity.role not in m.roles:
            raise PolicyDenied(
                f"role '{call.identity.role}' may not call {full}; "
                f"allowed roles: {', '.join(sorted(m.roles))}"
            )
        reason = self.deny(call.identity)
        if reason:
            raise PolicyDenied(reason)
        try:
            request = m.request.FromString(raw)
        except DecodeError as exc:
            raise _malformed(m, exc) from None
        return request

    def _invoke(self, full: str, m: Method, raw: bytes, context: grpc.ServicerContext) -> Any:
        """Admit, handle, log, set the receipt; abort with the refusal or return the result.

        For a streaming method the handler validates eagerly and returns a lazy iterator:
        the entry records the request (the stream is a pure function of it and the log)
        and is durable before the first message leaves.
        """
        call = Call(full, hashlib.sha256(raw).hexdigest(), _NOBODY)
        result: Any = None
        error: VeilError | None = None
        try:
            request = self._admit(call, m, raw, context)
            result = m.handler(request, call)
            if m.streaming:
                result = iter(result)
            elif call.result_sha256 is None:
                call.result_sha256 = hashlib.sha256(
                    result.SerializeToString(deterministic=True)
                ).hexdigest()
        except VeilError as exc:
            error = exc
        except Exception:
            log.exception("internal error in %s", full)
            error = _Internal()
        receipt, error = self._record(call, error)
        _trailers(context, receipt)
        if error is not None:
            abort(context, error)
        return result

    def _unary(self, full: str, m: Method) -> Callable[[bytes, grpc.ServicerContext], Message]:
        def behavior(raw: bytes, context: grpc.ServicerContext) -> Message:
            return self._invoke(full, m, raw, context)  # type: ignore[no-any-return]

        return behavior

    def _streaming(
        self, full: str, m: Method
    ) -> Callable[[bytes, grpc.ServicerContext], Iterator[Message]]:
        def behavior(raw: bytes, context: grpc.ServicerContext) -> Iterator[Message]:
            yield from self._invoke(full, m, raw, context)

        return behavior

    def _record(self, call: Call, error: VeilError | None) -> tuple[Receipt, VeilError | None]:
        """Append the call's entry; if the effect refuses (a quota race), log that refusal."""
        try:
            return self.log.append(
                call_record(call, error), effect=call.effect if error is None else None
            ), error
        except VeilError as exc:
            call.result_sha256 = None
            return self.log.append(call_record(call, exc)), exc


class _Internal(VeilError):
    status = "INTERNAL"

    def __init__(self) -> None:
        super().__init__(
            "internal error in the node; nothing was released. The operator can find the "
            "traceback in the node's output at the time of this call"
        )


def _malformed(m: Method, exc: DecodeError) -> VeilError:
    from veil.node.errors import InvalidInput

    return InvalidInput(f"malformed {m.request.DESCRIPTOR.full_name} message: {exc}")


def call_record(call: Call, error: VeilError | None) -> dict[str, Any]:
    """The log record of one call: who, what, on which job and data, with what outcome.

    Digests and meters only, never values.
    """
    ident = call.identity
    record: dict[str, Any] = {
        "kind": "call",
        "method": call.method,
        "caller": None
        if ident is _NOBODY
        else {"role": ident.role, "name": ident.name, "fingerprint": ident.fingerprint},
        "request_sha256": call.request_sha256,
        "status": "OK" if error is None else error.status,
    }
    if error is not None:
        record["message"] = str(error)
    if call.job_id:
        record["job"] = call.job_id
    if call.datasets:
        record["datasets"] = sorted(call.datasets)
    if call.meters and error is None:
        record["meters"] = call.meters
    if call.result_sha256 and error is None:
        record["result_sha256"] = call.result_sha256
    if call.details:
        record["details"] = call.details
    return record


def _trailers(context: grpc.ServicerContext, receipt: Receipt) -> None:
    context.set_trailing_metadata(
        (
            (TRAILER_INDEX, str(receipt.log_index)),
            (TRAILER_CHECKPOINT, receipt.checkpoint.encode()),
        )
    )


class _Nobody:
    role = ""
    name = ""
    fingerprint = ""


_NOBODY: Any = _Nobody()
