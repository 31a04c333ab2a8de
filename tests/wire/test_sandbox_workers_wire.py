"""A hostile analyst against a running node: its limits hold, its own process stays small.

The attacks are an approved analyst's: SQL the rules accept (public columns, post-processing
layers, allowed functions) that defeats a cooperative limit. Each is logged as refused and
charged nothing.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from veil.node.client import Client
from veil.node.errors import ResourceLimit

from tests.conftest import Federation, ServeProcess
from tests.wire.test_jobs_wire import job_toml
from tests.wire.test_mutation_killers_wire import _node_with, _run


def layers(n: int) -> str:
    """Post-processing layers, each repeating the previous layer's string 8 times."""
    sql = "SELECT region AS s FROM customers GROUP BY region"
    for _ in range(n):
        sql = f"SELECT concat({', '.join(['s'] * 8)}) AS s FROM ({sql})"
    return sql


def regexp_chunk(calls: int) -> str:
    columns = ", ".join(f"regexp_matches(s, '[a-z]{{{i % 50 + 2}}}q') AS z{i}" for i in range(calls))
    return f"SELECT {columns} FROM ({layers(7)})"


def _calls(node_home) -> list[dict]:  # type: ignore[no-untyped-def]
    conn = node_home.connect()
    try:
        entries = [json.loads(bytes(e)) for (e,) in conn.execute(
            "SELECT entry FROM log_entries ORDER BY idx")]
    finally:
        conn.close()
    return [e for e in entries if e.get("method") == "/veil.v1.QueryService/RunQuery"]


@pytest.mark.slow
def test_a_query_that_ignores_interrupts_is_stopped_at_the_node_time_limit(
    node_home, federation: Federation  # type: ignore[no-untyped-def]
) -> None:
    with _node_with(node_home, federation, "timeout_s = 30", "timeout_s = 1") as who:
        start = time.monotonic()
        with pytest.raises(ResourceLimit, match="longer than the limit of 1 s"):
            _run(who, regexp_chunk(600), '"region"')  # about a minute in-process
        assert time.monotonic() - start < 15  # submission, approvals, 1 s and the grace
        normal = _run(who, "SELECT region, COUNT(*) AS n FROM customers GROUP BY region",
                      '"region"')
        assert sorted(normal.arrays["n"].tolist()) == [20, 20, 20]
    (refused, ok) = _calls(node_home)
    assert refused["status"] == "RESOURCE_EXHAUSTED", refused
    assert "meters" not in refused and "result_sha256" not in refused
    assert ok["status"] == "OK"


@pytest.mark.slow
def test_a_query_building_huge_strings_never_grows_the_node(
    node_home, federation: Federation  # type: ignore[no-untyped-def]
) -> None:
    """Three 64-80 MB strings (and, in-process, their copies as Python objects and JSON):
    they live and die in a worker; the serving process's peak memory barely moves, and it
    answers other calls meanwhile."""
    node = ServeProcess(node_home.path)
    pid = node.proc.pid
    who = {n: Client(node.address, federation.identity(r, n)) for r, n in (
        ("analyst", "alice"), ("operator", "olga"), ("subject-representative", "sam"))}
    try:
        jobs = []
        for _ in range(2):
            job = who["alice"].submit_job(
                job_toml(f"SELECT length(s) AS z, s FROM ({layers(8)})", columns='"region"'))
            if who["olga"].approve(job.id).state != "approved":
                who["sam"].approve(job.id)
            jobs.append(job.id)
        who["alice"].datasets()  # the node's own imports and caches, before measuring
        before = _peak_kb(pid)
        errors: list[BaseException] = []

        def bomb(job: str) -> None:
            try:
                who["alice"].query(job)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=bomb, args=(j,)) for j in jobs]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            assert who["alice"].datasets()  # still serving
            time.sleep(0.05)
        for t in threads:
            t.join()
        assert len(errors) == 2 and all(isinstance(e, ResourceLimit) for e in errors), errors
        # stopped by the memory limit or, once built, by the result size: never released
        assert all("memory limit of 1,024 MB" in str(e) or "limit of 1,000,000 bytes" in str(e)
                   for e in errors), errors
        grown_mb = (_peak_kb(pid) - before) / 1024
        assert grown_mb < 100, f"the node's peak memory grew {grown_mb:.0f} MB"
    finally:
        for c in who.values():
            c.close()
        node.terminate()


def _peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")
