"""Write-before-release under SIGKILL: every answer a client received is in the log.

A real `veil node serve` subprocess serves a stream of calls from several client
threads; the test records the receipt (log index, signed checkpoint) of every response
that reached a client, kills the node with SIGKILL in the middle of the stream, restarts
it on the same directory, and checks that

- the whole log still verifies offline (``auditor.verify(LocalLog)``), with one auditor
  state kept across the crashes, so nothing verified before a crash was rewritten;
- every received receipt's index holds the entry of that call (method, caller, OK), its
  inclusion proof from the restarted node's store verifies against the new checkpoint,
  and the receipt's own checkpoint is signed by the node and is a prefix of the new one.

Calls that were in flight when the node died may or may not be in the log: the client
never got their answers, so the promise does not cover them.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from veil.node.audit import leaf_hash, open_checkpoint, verify_consistency, verify_inclusion
from veil.node.auditor import LocalLog, verify
from veil.node.client import Client
from veil.node.errors import VeilError
from veil.node.home import NodeHome
from tests.conftest import Federation, ServeProcess, make_node, register_customers

THREADS = 4
STREAM_SECONDS = 1.0
ROUNDS = 3
METHOD = "/veil.v1.CatalogService/ListDatasets"

Received = tuple[int, str, str]  # (log index, caller name, checkpoint note)


def stream_then_kill(node: ServeProcess, identities: dict[str, Path]) -> list[Received]:
    """Call the node from every identity's thread until the node is SIGKILLed."""
    received: list[Received] = []
    lock = threading.Lock()
    stop = threading.Event()
    started = threading.Barrier(len(identities) + 1)

    def caller(name: str, identity: Path) -> None:
        with Client(node.address, identity, timeout=10) as client:
            started.wait()
            while not stop.is_set():
                try:
                    client.datasets()
                except VeilError:  # UNAVAILABLE once the node is gone
                    return
                receipt = client.last_receipt
                assert receipt is not None
                with lock:
                    received.append((receipt.log_index, name, receipt.checkpoint))

    threads = [threading.Thread(target=caller, args=item) for item in identities.items()]
    for th in threads:
        th.start()
    started.wait()
    time.sleep(STREAM_SECONDS)
    node.kill()  # SIGKILL while calls are in flight
    stop.set()
    for th in threads:
        th.join(30)
        assert not th.is_alive(), "a client thread hung after the node died"
    return received


def check_log(home: NodeHome, auditor_state: Path, received: list[Received]) -> int:
    """Verify the whole log, then every received receipt against the new checkpoint."""
    source = LocalLog(home.path)
    try:
        report = verify(source, auditor_state)
        verifier = source.verifier()
    finally:
        source.conn.close()
    new = report.checkpoint
    assert report.entries_checked == new.size

    log = home.open_log()  # reads only; its writer thread never starts
    indices = [index for index, _, _ in received]
    assert len(set(indices)) == len(indices), "two responses carried the same log index"
    seen_checkpoints: set[str] = set()
    for index, name, note in received:
        assert index < new.size, f"received receipt {index} is past the log ({new.size})"
        data = log.entry(index)
        entry = json.loads(data)
        assert entry["kind"] == "call"
        assert (entry["method"], entry["caller"]["role"], entry["caller"]["name"],
                entry["status"]) == (METHOD, "analyst", name, "OK"), entry
        proof = log.inclusion_proof(index, new.size)
        verify_inclusion(leaf_hash(data), index, new.size, proof, new.root_hash)
        if note not in seen_checkpoints:
            seen_checkpoints.add(note)
            old = open_checkpoint(note, verifier, origin=home.origin)
            assert index < old.size <= new.size
            verify_consistency(old.size, new.size, old.root_hash, new.root_hash,
                               log.consistency_proof(old.size, new.size))
    return new.size


@pytest.mark.slow
def test_sigkill_mid_stream_loses_no_released_answer(
    federation: Federation, tmp_path: Path
) -> None:
    home = make_node(federation, tmp_path, "bank-crash")
    register_customers(home, tmp_path)
    identities = {f"crash-{t}": federation.identity("analyst", f"crash-{t}")
                  for t in range(THREADS)}
    auditor_state = tmp_path / "auditor"
    received: list[Received] = []
    sizes = []

    node = ServeProcess(home.path)
    try:
        for _ in range(ROUNDS):
            got = stream_then_kill(node, identities)
            assert len({name for _, name, _ in got}) == THREADS, "some caller got no answer"
            received += got
            node = ServeProcess(home.path)  # restart on the same directory
            sizes.append(check_log(home, auditor_state, received))
    finally:
        if node.proc.poll() is None:
            code, _, err = node.terminate()
            assert code == 0, err
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]

    # After a clean stop the log still verifies, and it tells the story: one start per
    # run, a stop only for the run that was not killed.
    final = check_log(home, auditor_state, received)
    assert final == sizes[-1] + 1  # node.stopped
    source = LocalLog(home.path)
    try:
        events = [json.loads(e).get("event") for _, e in source.entries(0, final)]
    finally:
        source.conn.close()
    assert events.count("node.started") == ROUNDS + 1
    assert events.count("node.stopped") == 1
