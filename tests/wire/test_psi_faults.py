"""PSI under bad input and faults (issue 13): real nodes, real mTLS streams, real X25519.

A hostile leader is a raw gRPC client holding the leader's own node certificate that speaks
``PeerService.ExchangePsi`` by hand; every refusal is checked at the node that refused, in
its log."""

from __future__ import annotations

import csv
import json
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from veil.v1 import peer_pb2_grpc, psi_pb2

from veil.node import catalog, federation as fed
from veil.node.client import Client, submit_everywhere
from veil.node.errors import VeilError
from veil.node.kinds import psi as psi_kind
from veil.protocols import psi as proto

from tests.conftest import Federation, Member
from tests.wire.test_sum_wire import submit_and_approve

LEVELS = {"phone": "sensitive", "ssn": "core"}
EXCHANGE = "/veil.v1.PeerService/ExchangePsi"
RUN = "/veil.v1.PsiService/RunPsi"


def write_keys(path: Path, keys: list[str | None]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["customer_id", "phone", "ssn"])
        for i, k in enumerate(keys):
            w.writerow([f"{path.stem}-{i:05d}", "" if k is None else k, f"S{i:09d}"])
    return path


def minima(peer: int = 1, intersection: int = 1) -> Callable[[str, str], str]:
    def edit(name: str, text: str) -> str:
        text = re.sub(r"(?m)^min_peer_set_size = \d+", f"min_peer_set_size = {peer}", text)
        return re.sub(r"(?m)^min_intersection_size = \d+",
                      f"min_intersection_size = {intersection}", text)

    return edit


@pytest.fixture
def pair(tmp_path: Path, start_nodes):  # type: ignore[no-untyped-def]
    """``pair(bank_keys, telco_keys, toml=...)``: the two nodes, with those phone columns."""

    def make(bank: list[str | None], telco: list[str | None], *,
             toml: Callable[[str, str], str] | None = None) -> dict[str, Member]:
        sources = {"bank": write_keys(tmp_path / "bank.csv", bank),
                   "telco": write_keys(tmp_path / "telco.csv", telco)}
        return start_nodes(sources, levels=LEVELS, key_column="customer_id",  # type: ignore[no-any-return]
                           dataset="customers", toml=toml or minima())

    return make


def job_text(members: dict[str, Member], *, normalize: str = "digits", params: str = "",
             columns: str = '["phone"]', quota: str = "") -> str:
    nodes = "".join(
        f'[[nodes]]\nname = "{m.name}"\naddress = "{m.address}"\ndataset = "customers"\n'
        f'columns = {columns}\n' for m in members.values())
    return (f'purpose = "PSI faults"\nkind = "psi"\nexpires = "1d"\n[quota]\nruns = 5\n{quota}'
            f'{nodes}[params]\nkey = "phone"\nnormalize = "{normalize}"\n{params}')


def run(federation: Federation, members: dict[str, Member], job_id: str) -> Any:
    with Client(members["bank"].address, federation.identity("analyst", "alice"),
                node="bank") as alice:
        return alice.run_psi(job_id)


def entries(member: Member, method: str | None = None) -> list[dict[str, Any]]:
    conn = member.home.connect()
    try:
        rows = conn.execute("SELECT entry FROM log_entries ORDER BY idx").fetchall()
    finally:
        conn.close()
    out = [json.loads(bytes(r[0])) for r in rows]
    return [e for e in out if method is None or e.get("method") == method]


def last(member: Member, method: str) -> dict[str, Any]:
    return entries(member, method)[-1]


def no_psi_threads_left() -> None:
    """Every thread a PSI run started (leader, peer, sender, reader) has ended."""
    from tests.conftest import wait_for

    def clear() -> bool:
        return not [t for t in threading.enumerate()
                    if t.name in ("psi-leader", "psi-peer", "psi-send", "psi-recv")]

    wait_for(clear, timeout=15)


def phones(n: int, start: int = 0) -> list[str | None]:
    return [f"+86 139 {i:08d}" for i in range(start, start + n)]


# --------------------------------------------------------------------------- set shapes


def test_identical_sets_match_every_key(federation: Federation, pair) -> None:  # type: ignore[no-untyped-def]
    keys = phones(30)
    members = pair(keys, list(reversed(keys)))
    out = run(federation, members, submit_and_approve(federation, members, job_text(members)))
    assert (out.cardinality, out.set_size, out.peer_set_size) == (30, 30, 30)


def test_disjoint_sets_below_the_minimum_release_nothing_and_both_entries_say_why(
    federation: Federation, pair  # type: ignore[no-untyped-def]
) -> None:
    members = pair(phones(20), phones(20, start=100))
    job_id = submit_and_approve(federation, members, job_text(members))
    with pytest.raises(VeilError) as err:
        run(federation, members, job_id)
    assert err.value.status == "FAILED_PRECONDITION"
    assert "node 'bank'" in str(err.value) and "min_intersection_size (1)" in str(err.value)
    lead, other = last(members["bank"], RUN), last(members["telco"], EXCHANGE)
    for e in (lead, other):
        assert e["status"] == "FAILED_PRECONDITION"
        assert e["meters"]["items"] == 40  # the work was done: metered though refused
        assert "result_sha256" not in e
    assert "min_intersection_size" in lead["message"]
    assert "released nothing" in other["message"]


def test_all_duplicate_sets_count_each_key_once(federation: Federation, pair) -> None:  # type: ignore[no-untyped-def]
    members = pair(["+86 139 00000001"] * 25, ["8613900000001", "86 139 0000 0001"] * 10)
    out = run(federation, members, submit_and_approve(federation, members, job_text(members)))
    assert (out.cardinality, out.set_size, out.peer_set_size) == (1, 1, 1)


def test_an_empty_set_is_refused_by_the_peer_minimum_naming_the_node(
    federation: Federation, pair  # type: ignore[no-untyped-def]
) -> None:
    # every key is NULL or has no digits: no normal form, so telco's set is empty
    members = pair(phones(5), [None, "", "n/a", "  ", None])
    job_id = submit_and_approve(federation, members, job_text(members))
    with pytest.raises(VeilError) as err:
        run(federation, members, job_id)
    assert err.value.status == "FAILED_PRECONDITION"
    assert "node 'bank'" in str(err.value) and "min_peer_set_size (1)" in str(err.value)
    lead = last(members["bank"], RUN)
    assert lead["status"] == "FAILED_PRECONDITION" and "min_peer_set_size" in lead["message"]
    assert lead["meters"]["items"] == 5 and lead["details"]["psi"]["set_size"] == 5


def test_the_peer_set_minimum_edge_at_the_node_that_refuses(
    federation: Federation, pair  # type: ignore[no-untyped-def]
) -> None:
    """telco demands 6 peer keys: 5 is refused there (logged and metered there), 6 runs."""
    def toml(name: str, text: str) -> str:
        return minima(peer=6 if name == "telco" else 1)(name, text)

    members = pair(phones(5), phones(10), toml=toml)
    job_id = submit_and_approve(federation, members, job_text(members))
    with pytest.raises(VeilError) as err:
        run(federation, members, job_id)
    assert "node 'telco'" in str(err.value) and "min_peer_set_size (6)" in str(err.value)
    other = last(members["telco"], EXCHANGE)
    assert other["status"] == "FAILED_PRECONDITION"
    assert "min_peer_set_size (6)" in other["message"]
    assert (other["meters"]["runs"], other["meters"]["items"]) == (1, 15)
    assert other["meters"]["rows_scanned"] == 10
    lead = last(members["bank"], RUN)
    assert lead["status"] == "FAILED_PRECONDITION" and "node 'telco'" in lead["message"]


def test_the_intersection_minimum_edge_at_the_non_leader(
    federation: Federation, pair  # type: ignore[no-untyped-def]
) -> None:
    """telco demands 4 shared keys, bank 1: with 3 shared nothing is released at either."""
    def toml(name: str, text: str) -> str:
        return minima(intersection=4 if name == "telco" else 1)(name, text)

    members = pair(phones(10), phones(3) + phones(7, start=500), toml=toml)
    job_id = submit_and_approve(federation, members, job_text(members))
    with pytest.raises(VeilError) as err:
        run(federation, members, job_id)
    assert err.value.status == "FAILED_PRECONDITION"
    assert "node 'telco'" in str(err.value) and "min_intersection_size (4)" in str(err.value)
    other, lead = last(members["telco"], EXCHANGE), last(members["bank"], RUN)
    assert other["status"] == lead["status"] == "FAILED_PRECONDITION"
    assert "min_intersection_size (4)" in other["message"] and other["meters"]["items"] == 20
    assert "node 'telco'" in lead["message"] and "result_sha256" not in lead
    assert lead["meters"]["items"] == 20


# --------------------------------------------------------------------------- normalization


@pytest.mark.parametrize(("mode", "bank", "telco", "expected"), [
    ("exact", ["ＡＢＣ１２３", "abc", "x y"], ["ABC123", "ABC", "x  y"], 1),
    ("trimmed", ["\u3000abc\t", " x y ", "Abc"], ["abc", "x y", "abc"], 2),
    ("casefold", ["  Straße ", "ＭＩＸＥＤ"], ["STRASSE", "mixed"], 2),
    ("digits", ["１３８-０００１", "(138) 0002", "١٣٨0003"], ["1380001", "138 0002", "1380003"], 2),
    ("e164", ["+86 138 0013 8000", "+８６１３８００１３８００１"],
     ["+8613800138000", "+86-138-0013-8001"], 2),
])
def test_unicode_fullwidth_and_whitespace_variants_match_as_normalize_says(
    federation: Federation, pair, mode: str, bank: list[str], telco: list[str],  # type: ignore[no-untyped-def]
    expected: int
) -> None:
    want = ({proto.normalize(k, mode) for k in bank} & {proto.normalize(k, mode) for k in telco}
            ) - {None}  # type: ignore[arg-type]
    assert len(want) == expected  # the test's own claim about normalize
    members = pair(bank, telco)  # type: ignore[arg-type]
    job_id = submit_and_approve(federation, members, job_text(members, normalize=mode))
    assert run(federation, members, job_id).cardinality == expected


# --------------------------------------------------------------------------- submission, quota


def test_a_job_naming_a_core_column_is_refused_at_submission(
    federation: Federation, pair  # type: ignore[no-untyped-def]
) -> None:
    members = pair(phones(5), phones(5))
    text = job_text(members, columns='["ssn"]').replace('key = "phone"', 'key = "ssn"')
    answers = submit_everywhere(text, federation.identity("analyst", "alice"), base_dir=Path("/"))
    for name in members:
        answer = answers[name]
        assert isinstance(answer, VeilError), answer
        assert answer.status in ("PERMISSION_DENIED", "INVALID_ARGUMENT")
        assert "ssn" in str(answer) and "core" in str(answer)


def test_sets_larger_than_the_items_quota_are_refused_before_points_are_exchanged(
    federation: Federation, pair  # type: ignore[no-untyped-def]
) -> None:
    members = pair(phones(30), phones(30))
    job_id = submit_and_approve(federation, members, job_text(members, quota="items = 50\n"))
    with pytest.raises(VeilError) as err:
        run(federation, members, job_id)
    assert err.value.status == "RESOURCE_EXHAUSTED"
    assert "node 'bank'" in str(err.value) and "items" in str(err.value)
    lead, other = last(members["bank"], RUN), last(members["telco"], EXCHANGE)
    assert lead["status"] == other["status"] == "RESOURCE_EXHAUSTED"
    assert "node 'bank'" in lead["message"] and "node 'telco'" in other["message"]
    # no point crossed: each node sent its hello (and the leader its finish) only
    assert lead["details"]["psi"]["peer_set_size"] == 30
    assert "meters" not in lead and "meters" not in other


# --------------------------------------------------------------------------- wrong callers


def _hostile(members: dict[str, Member], identity: Any, to: str = "telco") -> Any:
    channel = fed.channel(members[to].address, identity, node=to)
    return channel, peer_pb2_grpc.PeerServiceStub(channel)


def _hello(job_id: str, size: int) -> psi_pb2.PsiMessage:
    return psi_pb2.PsiMessage(job_id=job_id, hello=psi_pb2.PsiHello(
        run_id=secrets.token_hex(16), set_size=size))


def test_a_node_not_named_in_the_job_is_refused_and_logged(
    federation: Federation, pair, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    from veil.node.home import init_node

    members = pair(phones(5), phones(5))
    job_id = submit_and_approve(federation, members, job_text(members))
    mallory = init_node(tmp_path / "mallory", "mallory", federation_dir=federation.dir)
    channel, stub = _hostile(members, mallory.identity)
    with channel, pytest.raises(grpc.RpcError) as err:
        list(stub.ExchangePsi(iter([_hello(job_id, 5)]), timeout=10))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    e = last(members["telco"], EXCHANGE)
    assert e["status"] == "PERMISSION_DENIED" and e["caller"]["name"] == "mallory"


@pytest.mark.parametrize("who", ["analyst", "the other node"])
def test_a_wrong_certificate_calling_exchange_psi_is_refused_and_logged(
    federation: Federation, pair, who: str  # type: ignore[no-untyped-def]
) -> None:
    members = pair(phones(5), phones(5))
    job_id = submit_and_approve(federation, members, job_text(members))
    if who == "analyst":
        from veil.node import pki

        ident, at = pki.load_identity(federation.identity("analyst", "alice")), "telco"
    else:  # telco is not the leader: it may not open the exchange at bank
        ident, at = members["telco"].home.identity, "bank"
    channel, stub = _hostile(members, ident, to=at)
    with channel, pytest.raises(grpc.RpcError) as err:
        list(stub.ExchangePsi(iter([_hello(job_id, 5)]), timeout=10))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert last(members[at], EXCHANGE)["status"] == "PERMISSION_DENIED"


# --------------------------------------------------------------------------- a hostile leader


def _points(job_id: str, n: int, start: int = 0) -> bytes:
    return proto.prepare(proto.domain(job_id), [f"k{i}" for i in range(start, start + n)])


class _Script:
    """The leader's side of a raw exchange: ``send`` queues a message, ``stop`` ends it."""

    def __init__(self) -> None:
        import queue

        self.q: queue.Queue[psi_pb2.PsiMessage | None] = queue.Queue()

    def send(self, m: psi_pb2.PsiMessage) -> None:
        self.q.put(m)

    def stop(self) -> None:
        self.q.put(None)

    def __iter__(self) -> Iterator[psi_pb2.PsiMessage]:
        while (m := self.q.get()) is not None:
            yield m


@pytest.mark.parametrize(("batch", "problem"), [
    (b"\x01" * 33, "33 bytes"),
    (b"\x00" * 32, "small order"),
    (bytes(31) + b"\x80", "not a canonical"),
    (b"\xed" + b"\xff" * 30 + b"\x7f", "not a canonical"),  # u = p: non-canonical
    ("too many", "more points than its declared set size"),
])
def test_a_hostile_leader_sending_bad_points_is_refused_naming_the_problem(
    federation: Federation, pair, batch: Any, problem: str  # type: ignore[no-untyped-def]
) -> None:
    members = pair(phones(5), phones(5))
    job_id = submit_and_approve(federation, members, job_text(members))
    before = len(entries(members["telco"]))
    script = _Script()
    # the declared size is what is sent (the node does not wait for more), or one fewer
    script.send(_hello(job_id, 3 if batch == "too many" else max(1, len(batch) // 32)))
    if batch == "too many":
        script.send(psi_pb2.PsiMessage(mine=psi_pb2.PsiPoints(points=_points(job_id, 2))))
        batch = _points(job_id, 2, start=2)
    script.send(psi_pb2.PsiMessage(mine=psi_pb2.PsiPoints(points=batch)))
    channel, stub = _hostile(members, members["bank"].home.identity)
    with channel, pytest.raises(grpc.RpcError) as err:
        for _ in stub.ExchangePsi(iter(script), timeout=20):
            pass
    script.stop()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert problem in err.value.details() and "node 'bank'" in err.value.details()
    e = last(members["telco"], EXCHANGE)
    assert e["status"] == "INVALID_ARGUMENT" and problem in e["message"]
    assert "result_sha256" not in e
    assert len(entries(members["telco"])) == before + 1  # one entry, nothing else stored
    no_psi_threads_left()


# --------------------------------------------------------------------------- faults mid-stream


def _exchange_ok_after(federation: Federation, members: dict[str, Member], job_id: str) -> None:
    out = run(federation, members, job_id)
    assert out.cardinality == 5


def test_a_leader_that_disconnects_mid_stream_leaves_no_partial_result(
    federation: Federation, pair  # type: ignore[no-untyped-def]
) -> None:
    keys = phones(5000)
    members = pair(keys[:5] + phones(4995, start=10**6), keys)
    text = job_text(members, params='output = "membership"\nreceivers = ["telco"]\n'
                                    'into = "shared"')
    job_id = submit_and_approve(federation, members, text)
    script = _Script()
    script.send(_hello(job_id, 4096 * 3))
    channel, stub = _hostile(members, members["bank"].home.identity)
    stream = stub.ExchangePsi(iter(script), timeout=30)
    first = next(stream)
    assert first.WhichOneof("step") == "hello"
    for i in range(2):
        script.send(psi_pb2.PsiMessage(mine=psi_pb2.PsiPoints(
            points=_points(job_id, 4096, start=i * 4096))))
    next(stream)  # the peer is streaming its own points
    stream.cancel()
    script.stop()
    channel.close()
    from tests.conftest import wait_for

    wait_for(lambda: last(members["telco"], EXCHANGE)["status"] != "OK"
             if entries(members["telco"], EXCHANGE) else False)
    e = last(members["telco"], EXCHANGE)
    assert e["status"] in ("CANCELLED", "INVALID_ARGUMENT") and "result_sha256" not in e
    conn = members["telco"].home.connect()
    try:
        with pytest.raises(VeilError):
            catalog.current(conn, "shared")  # no new version from the broken run
    finally:
        conn.close()
    no_psi_threads_left()
    assert run(federation, members, job_id).cardinality == 5  # the node keeps serving


def test_a_leader_that_goes_idle_is_cut_off_by_the_node(
    federation: Federation, pair, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setattr(psi_kind, "PSI_IDLE_S", 1.0)
    members = pair(phones(5), phones(5))
    job_id = submit_and_approve(federation, members, job_text(members))
    script = _Script()
    script.send(_hello(job_id, 5))  # then nothing, with the stream held open
    channel, stub = _hostile(members, members["bank"].home.identity)
    try:
        with pytest.raises(grpc.RpcError) as err:
            for _ in stub.ExchangePsi(iter(script), timeout=30):
                pass
    finally:
        script.stop()
        channel.close()
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.value.details()
    assert "node 'bank'" in err.value.details() and "idle" in err.value.details()
    e = last(members["telco"], EXCHANGE)
    assert e["status"] == "DEADLINE_EXCEEDED" and "result_sha256" not in e
    no_psi_threads_left()
    assert run(federation, members, job_id).cardinality == 5


def test_two_runs_of_one_job_at_once_both_complete(federation: Federation, pair) -> None:  # type: ignore[no-untyped-def]
    members = pair(phones(40), phones(25, start=15))
    job_id = submit_and_approve(federation, members, job_text(members))
    outs: list[Any] = []

    def one() -> None:
        try:
            outs.append(run(federation, members, job_id))
        except Exception as exc:  # noqa: BLE001 - asserted below
            outs.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [getattr(o, "cardinality", o) for o in outs] == [25, 25]
    assert len({o.run_id for o in outs}) == 2


# --------------------------------------------------------------------------- mid-run


def _membership_job(federation: Federation, members: dict[str, Member]) -> str:
    text = job_text(members, params='output = "membership"\nreceivers = ["telco"]\n'
                                    'into = "shared"')
    return submit_and_approve(federation, members, text)


def _stored(member: Member, name: str) -> bool:
    conn = member.home.connect()
    try:
        catalog.current(conn, name)
        return True
    except VeilError:
        return False
    finally:
        conn.close()


@pytest.fixture
def big_pair(pair):  # type: ignore[no-untyped-def]
    """Sets large enough that the run is still exchanging at its first progress update."""
    return pair(phones(30_000), phones(30_000, start=29_000))


@pytest.mark.slow
def test_the_analyst_cancelling_run_psi_mid_run_is_logged_cancelled_and_the_peer_stops(
    federation: Federation, big_pair  # type: ignore[no-untyped-def]
) -> None:
    from tests.conftest import wait_for

    members = big_pair
    job_id = _membership_job(federation, members)
    with Client(members["bank"].address, federation.identity("analyst", "alice"),
                node="bank") as alice:
        stream = alice._psi.RunPsi(psi_pb2.RunPsiRequest(job_id=job_id), timeout=120)
        cancelled = False
        with pytest.raises(grpc.RpcError) as err:
            for update in stream:
                assert update.HasField("progress"), "the run ended before it could be cancelled"
                if update.progress.done < update.progress.total:
                    stream.cancel()
                    cancelled = True
    assert cancelled and err.value.code() == grpc.StatusCode.CANCELLED
    wait_for(lambda: bool(entries(members["bank"], RUN))
             and bool(entries(members["telco"], EXCHANGE)), timeout=30)
    lead, other = last(members["bank"], RUN), last(members["telco"], EXCHANGE)
    assert lead["status"] == "CANCELLED" and "result_sha256" not in lead
    assert other["status"] in ("CANCELLED", "INVALID_ARGUMENT"), other
    assert "result_sha256" not in other
    assert not _stored(members["telco"], "shared")
    no_psi_threads_left()
    assert run(federation, members, job_id).cardinality == 1000  # both keep serving


@pytest.mark.slow
@pytest.mark.parametrize("at", ["bank", "telco"])
def test_a_job_revoked_mid_run_releases_nothing(
    federation: Federation, big_pair, at: str  # type: ignore[no-untyped-def]
) -> None:
    members = big_pair
    job_id = _membership_job(federation, members)
    revoked: list[bool] = []

    def revoke(done: int, total: int) -> None:
        if not revoked and done < total:
            with Client(members[at].address,
                        federation.identity("operator", f"olga-{at}")) as olga:
                olga.revoke(job_id, "consent withdrawn")
            revoked.append(True)

    with Client(members["bank"].address, federation.identity("analyst", "alice"),
                node="bank") as alice, pytest.raises(VeilError) as err:
        alice.run_psi(job_id, progress=revoke)
    assert revoked, "the run ended before it could be revoked"
    assert "revoked" in str(err.value)
    for m, method in ((members["bank"], RUN), (members["telco"], EXCHANGE)):
        e = last(m, method)
        assert e["status"] != "OK" and "result_sha256" not in e, e
    assert "revoked" in last(members[at], RUN if at == "bank" else EXCHANGE)["message"]
    assert not _stored(members["telco"], "shared")


def _raw(m: psi_pb2.PsiMessage) -> bytes:
    return m.SerializeToString()


@pytest.mark.parametrize(("script", "problem"), [
    (lambda j: [_raw(_hello(j, 1)), b"\xff\xff\xff\xff"], "malformed veil.v1.PsiMessage"),
    (lambda j: [_raw(psi_pb2.PsiMessage(job_id=j, mine=psi_pb2.PsiPoints(points=_points(j, 1))))],
     "must start with hello"),
    (lambda j: [_raw(psi_pb2.PsiMessage(job_id=j, hello=psi_pb2.PsiHello(run_id="zz", set_size=1)))],
     "run_id: expected 32 lowercase hex digits"),
    (lambda j: [_raw(_hello(j, 10**12))], "declares 1,000,000,000,000 keys; at most 50,000,000"),
    (lambda j: [_raw(_hello(j, 1)), _raw(psi_pb2.PsiMessage(finish=psi_pb2.PsiFinish(release=True)))],
     "sent finish during the exchange of points"),
    (lambda j: [_raw(_hello(j, 1)), _raw(psi_pb2.PsiMessage(theirs=psi_pb2.PsiPoints(
        points=_points(j, 1))))], "sent back points this node must not get"),
    (lambda j: [_raw(_hello(j, 1)), _raw(psi_pb2.PsiMessage(mine=psi_pb2.PsiPoints(
        points=_points(j, 1), values=[b"x"])))], "values the job does not ask for"),
])
def test_a_hostile_leader_sending_malformed_or_out_of_order_messages_is_refused(
    federation: Federation, pair, script: Any, problem: str  # type: ignore[no-untyped-def]
) -> None:
    members = pair(phones(5), phones(5))
    job_id = submit_and_approve(federation, members, job_text(members))
    channel = fed.channel(members["telco"].address, members["bank"].home.identity, node="telco")
    call = channel.stream_stream(EXCHANGE, request_serializer=lambda b: b,
                                 response_deserializer=psi_pb2.PsiMessage.FromString)
    held = threading.Event()

    def messages() -> Iterator[bytes]:
        yield from script(job_id)
        held.wait(20)  # keep the stream open: the node must answer without the caller's end

    with channel, pytest.raises(grpc.RpcError) as err:
        try:
            for _ in call(messages(), timeout=20):
                pass
        finally:
            held.set()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert problem in err.value.details()
    e = last(members["telco"], EXCHANGE)
    assert e["status"] == "INVALID_ARGUMENT" and problem in e["message"]
    assert "result_sha256" not in e and "meters" not in e
    no_psi_threads_left()


@pytest.mark.slow
def test_a_leader_that_never_reads_is_cut_off_by_the_node(
    federation: Federation, pair, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    """It sends its hello and every point it declared, but never reads the node's points nor
    sends its finish: whichever the node waits on (a send stalled by flow control, or the
    finish), it lets go after PSI_IDLE_S, and no thread of the run is left."""
    from tests.conftest import wait_for

    monkeypatch.setattr(psi_kind, "PSI_IDLE_S", 1.0)
    members = pair(phones(5), phones(60_000, start=3))  # ~2 MB of points from telco
    job_id = submit_and_approve(federation, members, job_text(members))
    script = _Script()
    script.send(_hello(job_id, 1))
    script.send(psi_pb2.PsiMessage(mine=psi_pb2.PsiPoints(points=_points(job_id, 1))))
    channel, stub = _hostile(members, members["bank"].home.identity)
    stream = stub.ExchangePsi(iter(script), timeout=60)  # started, never read
    try:
        wait_for(lambda: bool(entries(members["telco"], EXCHANGE)), timeout=40)
        e = last(members["telco"], EXCHANGE)
        assert e["status"] == "DEADLINE_EXCEEDED" and "idle too long" in e["message"], e
        no_psi_threads_left()
    finally:
        stream.cancel()
        script.stop()
        channel.close()
    # the leader has no idle bound: telco hashing 60,000 keys before its hello is no fault
    assert run(federation, members, job_id).cardinality == 2


def test_a_leader_trickling_points_is_cut_off_at_the_exchange_deadline(
    federation: Federation, pair, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    """Never idle long enough for the idle bound, it would hold the node for ever: the
    answering node's own PSI_TIMEOUT_S ends it."""
    members = pair(phones(5), phones(5))
    job_id = submit_and_approve(federation, members, job_text(members))
    monkeypatch.setattr(psi_kind, "PSI_TIMEOUT_S", 2.0)
    stop = threading.Event()

    def trickle() -> Iterator[psi_pb2.PsiMessage]:
        yield _hello(job_id, 1000)
        for i in range(1000):
            if stop.wait(0.2):
                return
            yield psi_pb2.PsiMessage(mine=psi_pb2.PsiPoints(points=_points(job_id, 1, start=i)))

    channel, stub = _hostile(members, members["bank"].home.identity)
    try:
        with pytest.raises(grpc.RpcError) as err:
            for _ in stub.ExchangePsi(trickle(), timeout=60):
                pass
    finally:
        stop.set()
        channel.close()
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.value.details()
    assert "did not finish the exchange within 2 s" in err.value.details()
    e = last(members["telco"], EXCHANGE)
    assert e["status"] == "DEADLINE_EXCEEDED" and "result_sha256" not in e
    no_psi_threads_left()
