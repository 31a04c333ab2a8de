"""The served methods are exactly the protos' rpcs, and a compute answer cannot leave uncharged."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import veil.v1

from veil.node import kinds
from veil.node._rpc import Outcome, Rpc, resolve
from veil.node.jobs import KINDS, Meters
from veil.node.services import MODULES


def _declared() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for info in pkgutil.iter_modules(veil.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"veil.v1.{info.name}")
            for service in module.DESCRIPTOR.services_by_name.values():
                out[service.full_name] = {m.name for m in service.methods}
    return out


def test_every_rpc_in_the_protos_is_served_by_a_service_module(running) -> None:
    tables = {m.SERVICE: m.rpcs(running.ctx) for m in MODULES}
    assert {name: set(rpcs) for name, rpcs in tables.items()} == _declared()
    for name, rpcs in tables.items():
        resolve(name, rpcs)  # message types and streaming shapes from the descriptors


def test_a_method_the_protos_do_not_declare_is_a_startup_error() -> None:
    def handler(_req: object, _call: object) -> None:
        return None

    with pytest.raises(TypeError, match="not served \\['GetInfo'\\], not declared \\['GetInfos'\\]"):
        resolve("veil.v1.NodeService", {"GetInfos": Rpc(frozenset({"analyst"}), handler)})


def test_a_compute_method_needs_a_job_id_in_its_request() -> None:
    with pytest.raises(TypeError, match="needs a job_id"):
        resolve("veil.v1.NodeService",
                {"GetInfo": Rpc(frozenset({"analyst"}), lambda *a: None, kind="query")})


def test_kinds_registry_is_what_node_info_reports(client_for) -> None:  # type: ignore[no-untyped-def]
    assert set(kinds.REGISTRY) <= set(KINDS)
    assert client_for("operator", "olga").info().job_kinds == tuple(kinds.REGISTRY)


def test_the_node_runs_every_kind_of_the_job_language() -> None:
    """Every kind a job may name has a module; a name outside the language is refused."""
    from veil.node.errors import Unimplemented

    assert tuple(kinds.REGISTRY) == KINDS or set(kinds.REGISTRY) == set(KINDS)
    with pytest.raises(Unimplemented, match="does not run dp_sum jobs yet .it runs: query, sum, psi, intersection_sum"):
        kinds.get("dp_sum")


def _gate_and_method(running, handler):  # type: ignore[no-untyped-def]
    from veil.node._rpc import Gate

    ctx = running.ctx
    gate = Gate(ctx.home.trust(), ctx.log, ctx.deny, ctx.grants)
    (method,) = resolve("veil.v1.QueryService",
                        {"RunQuery": Rpc(frozenset({"analyst"}), handler, kind="query")})
    return gate, method


def _approved_job(running, client_for):  # type: ignore[no-untyped-def]
    from tests.wire.test_jobs_wire import job_toml

    alice = client_for("analyst", "alice")
    job = alice.submit_job(job_toml())
    client_for("operator", "olga").approve(job.id)
    client_for("subject-representative", "sam").approve(job.id)
    return job, running.ctx.home.trust().identify(alice.identity.read_tls_cert())


def test_a_compute_handler_that_returns_a_bare_message_releases_nothing(
    running, client_for  # type: ignore[no-untyped-def]
) -> None:
    """Charging is not a convention: a compute answer that is not an Outcome never leaves."""
    from veil.v1 import query_pb2

    from veil.node._rpc import Call

    gate, method = _gate_and_method(running, lambda req, call, grant: query_pb2.QueryResult())
    job, alice = _approved_job(running, client_for)
    call = Call("/veil.v1.QueryService/RunQuery", "", alice)
    with pytest.raises(TypeError, match="must return an Outcome"):
        gate._handle(method, query_pb2.RunQueryRequest(job_id=job.id), call)
    assert call.effect is None and call.meters is None


def test_a_compute_outcome_is_charged_by_the_gate(running, client_for) -> None:  # type: ignore[no-untyped-def]
    from veil.v1 import query_pb2

    from veil.node._rpc import Call

    seen = []

    def handler(req, call, grant):  # type: ignore[no-untyped-def]
        seen.append(grant.id)
        return Outcome(query_pb2.QueryResult(rows=7), Meters(runs=1, rows_scanned=5),
                       (grant.dataset.ref,), "ab" * 32)

    gate, method = _gate_and_method(running, handler)
    job, alice = _approved_job(running, client_for)
    call = Call("/veil.v1.QueryService/RunQuery", "", alice)
    response = gate._handle(method, query_pb2.RunQueryRequest(job_id=job.id), call)
    assert response.rows == 7 and seen == [job.id]
    assert call.job_id == job.id and call.meters["rows_scanned"] == 5
    assert call.datasets == [running.ctx.grants.get(job.id).dataset.ref]
    running.ctx.log.append({"kind": "call", "method": "test"}, effect=call.effect)
    assert client_for("operator", "olga").job(job.id).used["rows_scanned"] == 5


def test_a_plain_method_may_not_return_an_outcome(running, client_for) -> None:  # type: ignore[no-untyped-def]
    from veil.v1 import node_pb2

    from veil.node._rpc import Call, Gate

    ctx = running.ctx
    gate = Gate(ctx.home.trust(), ctx.log, ctx.deny, ctx.grants)
    (method,) = resolve("veil.v1.NodeService", {"GetInfo": Rpc(
        frozenset({"analyst"}),
        lambda req, call: Outcome(node_pb2.NodeInfo(), Meters(runs=1), (), ""))})
    with pytest.raises(TypeError, match="without a grant"):
        gate._handle(method, node_pb2.GetInfoRequest(), Call("/x", "", None))
