"""Every RPC goes through one wrapper: authenticate, authorize, parse, handle, log, release.

Servicers stay thin: a service module (``node/services/``) supplies, per method, the roles
allowed to call it and a plain handler (:class:`Rpc`); names and message types come from
the generated descriptors. This module does the rest, in the order DESIGN.md gives for one
call:

1. identify the caller from its client certificate (federation CA, validity, CRL, role);
2. check the caller's role for the method and the node's deny list;
3. parse the request ourselves, so a truncated or garbage message is logged and
   answered ``INVALID_ARGUMENT`` instead of grpcio's bare ``INTERNAL``;
4. for a compute method, admit the job for the method's kind and hand the handler the
   grant; it returns an :class:`Outcome` (response, meters, datasets, digest), and the gate
   turns the meters into the effect that charges them. A handler has no other way to
   charge, and a compute answer that is not an Outcome is an internal error: so no compute
   answer can leave uncharged;
5. append the log entry — allowed or denied, success or failure — with its effect,
   durably, and only then release the answer, with the receipt in trailing metadata.

A compute method may stream: its handler is then a generator that yields interim messages
(progress to an analyst, blinded points to a peer: messages that carry no result) and
returns its :class:`Outcome`; the gate logs and charges that, and only then sends the
outcome's response as the stream's last message. A client-streaming compute method (a
peer's exchange) gets the rest of the caller's stream as an iterator of parsed, size-checked
messages; the entry's ``request_sha256`` covers every message received. A stream the caller
abandons is logged as ``CANCELLED``.

Domain errors map to status codes here and only here (``VeilError.status``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from veil.node import bounds
from veil.node.errors import PolicyDenied, Unauthenticated, VeilError
from veil.node.grants import Grant, Grants
from veil.node.jobs import JobSpec, Meters
from veil.node.log import Effect, EntryTooLarge, Log, Receipt
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
    #: the identity a refused certificate claims (role, name, fingerprint, revoked)
    presented: dict[str, Any] | None = None
    #: a refusal that still charges its meters (the work was done: a PSI below a minimum)
    charge_refusal: bool = False


#: ``(request, call)``, or ``(request, call, grant)`` for a compute method
Handler = Callable[..., Any]


@dataclass(frozen=True)
class Rpc:
    """What a service module supplies for one method: who may call it and what handles it.

    The method's name, message types and streaming shape come from the generated
    descriptors (:meth:`Gate.service`), never from a second hand-written table. A method with
    a ``kind`` is a compute method: the gate admits the job named by the request's
    ``job_id`` for that kind and calls ``handler(request, call, grant)``, which must return an
    :class:`Outcome`; the gate charges it inside the log entry's transaction. Any other
    method's handler is ``handler(request, call)`` and returns the response message.
    """

    roles: frozenset[str]
    handler: Handler
    #: the job kind (or kinds: a psi or intersection_sum job) the method runs
    kind: str | tuple[str, ...] | None = None
    #: for a compute method served to peers: the node a job lets call it (its aggregator)
    peer: Callable[[JobSpec], str] | None = None


@dataclass(frozen=True)
class Outcome:
    """What a compute handler returns: the answer and everything the gate logs and charges."""

    response: Message | None
    meters: Meters
    datasets: tuple[str, ...]
    digest: str
    #: more state the call writes, committed with its log entry (after the charge)
    effect: Effect | None = None
    #: the run did its work but releases nothing: logged with this refusal and charged
    refused: VeilError | None = None


@dataclass(frozen=True)
class Method:
    """One served method, resolved against its descriptor."""

    name: str
    request: type[Message]
    response: type[Message]
    rpc: Rpc
    server_streaming: bool
    client_streaming: bool = False


def abort(context: grpc.ServicerContext, error: VeilError) -> NoReturn:
    context.abort(getattr(grpc.StatusCode, error.status), bounds.status_message(str(error)))
    raise AssertionError("unreachable")  # context.abort raises


class Gate:
    """Authentication, authorization and logging shared by every service."""

    def __init__(self, trust: TrustStore, log_: Log, deny: Callable[[Identity], str | None],
                 grants: Grants):
        self.trust = trust
        self.log = log_
        self.deny = deny
        self.grants = grants

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
        try:
            return self.trust.identify(pems[0])
        except Unauthenticated as exc:
            exc.presented = bounds.presented(pems[0], self.trust.revoked_serials)  # type: ignore[attr-defined]
            raise

    def service(self, service_name: str, rpcs: Mapping[str, Rpc]) -> grpc.GenericRpcHandler:
        """The handler of one service: every method its descriptor declares, each supplied by
        ``rpcs``; a method left out or one the protos do not declare is a startup error."""
        handlers = {}
        for m in resolve(service_name, rpcs):
            full = f"/{service_name}/{m.name}"
            if m.client_streaming:
                handlers[m.name] = grpc.stream_stream_rpc_method_handler(
                    self._exchange(full, m), response_serializer=m.response.SerializeToString
                )
            elif m.server_streaming and m.rpc.kind is not None:
                handlers[m.name] = grpc.unary_stream_rpc_method_handler(
                    self._compute_stream(full, m),
                    response_serializer=m.response.SerializeToString,
                )
            elif m.server_streaming:
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
        try:
            call.identity = self.authenticate(context)
        except Unauthenticated as exc:
            call.presented = getattr(exc, "presented", None)
            raise
        roles = m.rpc.roles
        if call.identity.role not in roles:
            raise PolicyDenied(
                f"role '{call.identity.role}' may not call {full}; "
                f"allowed roles: {', '.join(sorted(roles))}"
            )
        reason = self.deny(call.identity)
        if reason:
            raise PolicyDenied(reason)
        bounds.check_size(full, raw)
        try:
            request = m.request.FromString(raw)
        except DecodeError as exc:
            raise _malformed(m, exc) from None
        bounds.check_request(request)
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
            result = self._handle(m, request, call)
            if m.server_streaming:
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

    def _handle(self, m: Method, request: Any, call: Call) -> Any:
        """Run the handler; a compute method only ever runs under a grant, and its outcome
        is charged by the effect that commits with its log entry."""
        kind = m.rpc.kind
        if kind is None:
            result = m.rpc.handler(request, call)
            if isinstance(result, Outcome):
                raise TypeError(f"{call.method} returned a compute outcome without a grant")
            return result
        grant = self._grant(m, request, call)
        outcome = self._settle(m, call, grant, m.rpc.handler(request, call, grant))
        if outcome.refused is not None:
            raise outcome.refused
        return outcome.response

    def _grant(self, m: Method, request: Any, call: Call) -> Grant:
        call.job_id = request.job_id
        assert m.rpc.kind is not None
        return self.grants.admit(request.job_id, call.identity, m.rpc.kind, m.rpc.peer)

    def _settle(self, m: Method, call: Call, grant: Grant, outcome: Any) -> Outcome:
        """Record an outcome on the call and set the effect that charges it."""
        if not isinstance(outcome, Outcome):
            raise TypeError(f"{call.method} is a {m.rpc.kind} method and must return an Outcome")
        call.datasets = list(outcome.datasets)
        call.meters = outcome.meters.to_dict()
        call.result_sha256 = outcome.digest
        call.charge_refusal = outcome.refused is not None
        charge = self.grants.charge(grant, call.identity, call.method, outcome.meters)
        call.effect = charge if outcome.effect is None else _both(charge, outcome.effect)
        return outcome

    def _compute_stream(
        self, full: str, m: Method
    ) -> Callable[[bytes, grpc.ServicerContext], Iterator[Message]]:
        def behavior(raw: bytes, context: grpc.ServicerContext) -> Iterator[Message]:
            yield from self._run_stream(full, m, raw, None, context)

        return behavior

    def _exchange(
        self, full: str, m: Method
    ) -> Callable[[Iterator[bytes], grpc.ServicerContext], Iterator[Message]]:
        def behavior(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[Message]:
            try:
                first = next(requests)
            except (StopIteration, grpc.RpcError):
                return  # the caller closed before its first message: nothing to log
            yield from self._run_stream(full, m, first, requests, context)

        return behavior

    def _run_stream(self, full: str, m: Method, raw: bytes, rest: Iterator[bytes] | None,
                    context: grpc.ServicerContext) -> Iterator[Message]:
        """A streaming compute call: interim messages as the handler yields them, then the
        entry (charged), then the outcome's response as the last message."""
        call = Call(full, hashlib.sha256(raw).hexdigest(), _NOBODY)
        digest = _StreamDigest(raw)
        error: VeilError | None = None
        outcome: Outcome | None = None
        handler: Iterator[Message] | None = None
        try:
            request = self._admit(call, m, raw, context)
            grant = self._grant(m, request, call)
            if rest is None:
                handler = m.rpc.handler(request, call, grant)
            else:
                handler = m.rpc.handler(request, call, grant,
                                        self._incoming(full, m, rest, digest))
            while True:
                try:
                    message = next(handler)  # type: ignore[arg-type]
                except StopIteration as stop:
                    outcome = self._settle(m, call, grant, stop.value)
                    break
                yield message
            error = outcome.refused
        except VeilError as exc:
            error = exc
        except GeneratorExit:
            # the caller went away mid-stream: log that, release nothing
            if handler is not None:
                handler.close()  # type: ignore[attr-defined]
            call.request_sha256 = digest.hexdigest()
            self._record(call, Cancelled("the caller closed the stream before the end; "
                                         "nothing was released"))
            raise
        except grpc.RpcError:
            error = Cancelled("the caller's stream broke off before the end; nothing was "
                              "released")
        except Exception:
            log.exception("internal error in %s", full)
            error = _Internal()
        finally:
            if handler is not None and (error is not None or outcome is None):
                handler.close()  # type: ignore[attr-defined]
        call.request_sha256 = digest.hexdigest()
        receipt, error = self._record(call, error)
        _trailers(context, receipt)
        if error is not None:
            abort(context, error)
        if outcome is not None and outcome.response is not None:
            yield outcome.response

    def _incoming(self, full: str, m: Method, rest: Iterator[bytes],
                  digest: _StreamDigest) -> Iterator[Message]:
        """The caller's further messages, each size-checked and parsed like the first."""
        for raw in rest:
            digest.update(raw)
            bounds.check_size(full, raw)
            try:
                message = m.request.FromString(raw)
            except DecodeError as exc:
                raise _malformed(m, exc) from None
            yield message

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
        charged = error is None or call.charge_refusal
        try:
            return self.log.append(
                call_record(call, error), effect=call.effect if charged else None
            ), error
        except EntryTooLarge as exc:  # the log kept a refusal in its place; release nothing
            return exc.receipt, exc
        except VeilError as exc:
            call.result_sha256 = None
            return self.log.append(call_record(call, exc)), exc


def _both(first: Effect, second: Effect) -> Effect:
    def effect(tx: Any, index: int) -> None:
        first(tx, index)
        second(tx, index)

    return effect


class _StreamDigest:
    """SHA-256 over every message of a caller's stream, each length-prefixed; a stream of one
    message digests as that message alone (as a unary request does)."""

    def __init__(self, first: bytes) -> None:
        self._first = first
        self._h: Any = None

    def update(self, raw: bytes) -> None:
        if self._h is None:
            self._h = hashlib.sha256()
            self._h.update(len(self._first).to_bytes(8, "big") + self._first)
        self._h.update(len(raw).to_bytes(8, "big") + raw)

    def hexdigest(self) -> str:
        return (hashlib.sha256(self._first) if self._h is None else self._h).hexdigest()


class Cancelled(VeilError):
    status = "CANCELLED"


class _Internal(VeilError):
    status = "INTERNAL"

    def __init__(self) -> None:
        super().__init__(
            "internal error in the node; nothing was released. The operator can find the "
            "traceback in the node's output at the time of this call"
        )


def resolve(service_name: str, rpcs: Mapping[str, Rpc]) -> list[Method]:
    """Match a service module's rpcs with the service's descriptor, exactly."""
    try:
        service = descriptor_pool.Default().FindServiceByName(service_name)
    except KeyError:
        raise TypeError(f"no service {service_name} in the veil.v1 descriptors") from None
    declared = {m.name: m for m in service.methods}
    missing, extra = sorted(set(declared) - set(rpcs)), sorted(set(rpcs) - set(declared))
    if missing or extra:
        raise TypeError(f"{service_name}: not served {missing}, not declared {extra}")
    methods = []
    for name, d in declared.items():
        rpc = rpcs[name]
        if d.client_streaming and not (d.server_streaming and rpc.kind is not None):
            raise TypeError(f"{service_name}/{name}: only a compute method may stream from the "
                            "caller, and then both ways (a peer's exchange)")
        request = message_factory.GetMessageClass(d.input_type)
        if rpc.kind is not None and "job_id" not in request.DESCRIPTOR.fields_by_name:
            raise TypeError(f"{service_name}/{name}: a compute method's request needs a job_id")
        methods.append(Method(name, request, message_factory.GetMessageClass(d.output_type),
                              rpc, d.server_streaming, d.client_streaming))
    return methods


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
        "caller": call.presented
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
    if call.meters and (error is None or call.charge_refusal):
        record["meters"] = call.meters
    if call.result_sha256 and error is None:
        record["result_sha256"] = call.result_sha256
    if call.details:
        record["details"] = call.details
    return bounds.bound_record(record)


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
