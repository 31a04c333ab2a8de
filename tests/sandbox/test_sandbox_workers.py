"""The sandbox's worker processes: limits the operating system keeps, answers like the engine.

Each hostile query here is one the in-process engine could not stop in time (its watchdog
only interrupts between DuckDB's chunks) or whose memory landed in the serving process.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from veil.sandbox import Limits, QueryLimitExceeded, QueryRejected, Table, Workers, run, validate
from veil.sandbox import _workers
from veil.sandbox._errors import SandboxError

from test_sandbox_engine import COLUMNS, DATA, NORMAL, POLICY, write_parquet


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Table:
    path = tmp_path_factory.mktemp("workers") / "customers.parquet"
    write_parquet(path, DATA)
    return Table("customers", str(path), COLUMNS, "customer_id")


@pytest.fixture(scope="module")
def workers() -> Workers:
    with Workers(2) as pool:
        yield pool


def layers(n: int, k: int = 8) -> str:
    """Post-processing layers that each repeat the previous layer's string k times."""
    sql = "SELECT region AS s FROM customers GROUP BY region"
    for _ in range(n):
        sql = f"SELECT concat({', '.join(['s'] * k)}) AS s FROM ({sql})"
    return sql


def regexp_chunk(calls: int) -> str:
    """One chunk of ``calls`` regular expressions over four 10 MB strings: DuckDB checks for
    an interrupt only between chunks, so the whole chunk runs whatever the deadline."""
    columns = ", ".join(f"regexp_matches(s, '[a-z]{{{i % 50 + 2}}}q') AS z{i}" for i in range(calls))
    return f"SELECT {columns} FROM ({layers(7)})"


def worker_pids(pool: Workers) -> set[int]:
    with pool._cond:
        return {w.proc.pid for w in pool._idle}


def test_workers_answer_exactly_like_the_engine(workers: Workers, table: Table) -> None:
    for sql in (
        NORMAL,
        "SELECT phone, count(*) AS n, avg(salary) AS a FROM customers GROUP BY phone",
        "SELECT city, sum(amount) AS s FROM customers WHERE age > 40 GROUP BY city",
        "SELECT region, count(*) AS n FROM customers GROUP BY region",  # one suppressed
    ):
        here = run(validate(sql, [table], POLICY, Limits()), Limits())
        there = workers.run(sql, [table], POLICY, Limits())
        assert there.digest == here.digest
        assert there.columns == here.columns and there.types == here.types
        assert there.suppressed_groups == here.suppressed_groups
        assert there.meters.bytes_out == here.meters.bytes_out
        assert there.meters.rows_scanned == here.meters.rows_scanned
        for name in here.columns:
            assert there.arrays[name].tolist() == here.arrays[name].tolist()
            assert not there.arrays[name].flags.writeable


def test_refusals_cross_the_process_boundary_with_their_fields(
    workers: Workers, table: Table
) -> None:
    with pytest.raises(QueryRejected) as refused:
        workers.run("SELECT ssn FROM customers", [table], POLICY, Limits())
    assert refused.value.construct == "column 'ssn'"
    assert "core" in refused.value.reason
    with pytest.raises(QueryLimitExceeded) as limit:
        workers.run(NORMAL, [table], POLICY, Limits(max_result_rows=1))
    assert limit.value.limit == "result rows"
    assert "more than 1 rows" in str(limit.value)


@pytest.mark.slow
def test_regexp_chunk_past_the_deadline_is_stopped_at_its_limit(
    workers: Workers, table: Table
) -> None:
    """The attack: in-process, the chunk runs to its end long after the limit; in a worker,
    the query ends at its limit (plus the grace) and the worker is replaced."""
    limits = Limits(timeout_s=0.5)
    sql = regexp_chunk(150)
    start = time.monotonic()
    with pytest.raises(QueryLimitExceeded):  # the engine does notice, but only at the end
        run(validate(sql, [table], POLICY, limits), limits)
    in_process = time.monotonic() - start
    assert in_process > 4 * limits.timeout_s, "the attack no longer overruns in-process"

    sql = regexp_chunk(600)  # ten times the work: minutes in-process
    before = worker_pids(workers)
    start = time.monotonic()
    with pytest.raises(QueryLimitExceeded) as info:
        workers.run(sql, [table], POLICY, limits)
    stopped_after = time.monotonic() - start
    assert info.value.limit == "timeout"
    assert "0.5 s" in str(info.value)
    assert stopped_after < limits.timeout_s + _workers.GRACE_S + 2.0  # not in_process * 10
    # the killed worker is gone, and the pool serves the next query with a fresh one
    assert workers._count <= workers.size
    result = workers.run(NORMAL, [table], POLICY, Limits())
    assert list(result.arrays["n"]) == [750, 750, 750, 750]
    for pid in before - worker_pids(workers):
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_memory_beyond_the_os_limit_ends_the_query_not_the_node(table: Table) -> None:
    """Four 10 MB strings and their conversion need more than 64 MB plus no headroom: the
    worker's RLIMIT_DATA stops them; the node's own memory never held them."""
    sql = f"SELECT length(s) AS z, s FROM ({layers(7)})"
    limits = Limits(memory_limit_mb=64, max_result_bytes=10**9)
    with Workers(1, headroom_mb=0) as pool:
        with pytest.raises(QueryLimitExceeded) as info:
            pool.run(sql, [table], POLICY, limits)
        assert info.value.limit == "memory"
        result = pool.run(NORMAL, [table], POLICY, Limits())  # the pool still serves
        assert result.meters.result_rows == 4
    with Workers(1) as pool:  # the same query fits the default headroom
        result = pool.run(sql, [table], POLICY, Limits(max_result_bytes=10**9))
        assert sorted(result.arrays["z"].tolist()) == [8388608, 8388608, 10485760, 10485760]


def test_each_worker_runs_under_os_limits(workers: Workers, table: Table) -> None:
    workers.run(NORMAL, [table], POLICY, Limits(memory_limit_mb=100))
    pid = next(iter(worker_pids(workers)))
    limits = Path(f"/proc/{pid}/limits").read_text()
    assert _limit_line(limits, "Max file size") == "0"
    assert _limit_line(limits, "Max core file size") == "0"
    data = int(_limit_line(limits, "Max data size"))
    assert (100 + _workers.HEADROOM_MB) << 20 < data < (100 + _workers.HEADROOM_MB + 1024) << 20


def _limit_line(text: str, name: str) -> str:
    [line] = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
    return line[len(name):].split()[0]


def test_a_full_pool_makes_a_query_wait_then_refuses_it_as_busy(table: Table) -> None:
    with Workers(1) as pool:
        hold = threading.Thread(
            target=lambda: pytest.raises(QueryLimitExceeded, pool.run, regexp_chunk(600),
                                         [table], POLICY, Limits(timeout_s=3.0)),
        )
        hold.start()
        try:
            deadline = time.monotonic() + 30
            while pool._count == 0 or pool._idle:  # until the first query holds the worker
                assert time.monotonic() < deadline
                time.sleep(0.01)
            with pytest.raises(QueryLimitExceeded) as info:
                pool.run(NORMAL, [table], POLICY, Limits(timeout_s=0.3))
            assert info.value.limit == "busy"
            assert "all 1 sandbox workers stayed busy for 0.3 s" in str(info.value)
        finally:
            hold.join()
        assert pool.run(NORMAL, [table], POLICY, Limits()).meters.result_rows == 4


def test_a_worker_answer_cannot_make_the_node_run_code() -> None:
    evil = pickle.dumps(("ok", (os.system, ("true",))))
    with pytest.raises(SandboxError, match="posix.system, not allowed"):
        _workers._loads(evil)
    with pytest.raises(SandboxError, match="wrong shape"):
        _workers._loads(pickle.dumps(["ok"]))
    with pytest.raises(SandboxError, match="cannot be read"):
        _workers._loads(b"\x80\x05garbage")


def test_workers_end_with_the_node_even_when_it_is_killed(tmp_path: Path, table: Table) -> None:
    """A node killed with SIGKILL runs no cleanup: its idle workers see their socket close."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from veil.sandbox import Limits, Table, Workers
        from test_sandbox_engine import COLUMNS, NORMAL, POLICY
        pool = Workers(2)
        t = Table("customers", {table.path!r}, COLUMNS, "customer_id")
        pool.run(NORMAL, [t], POLICY, Limits())
        print(*(w.proc.pid for w in pool._idle), flush=True)
        time.sleep(600)
    """)
    node = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in node.stdout.readline().split()]  # type: ignore[union-attr]
        assert pids
        node.send_signal(signal.SIGKILL)
        node.wait()
        deadline = time.monotonic() + 20
        while any(Path(f"/proc/{p}").exists() and not _zombie(p) for p in pids):
            assert time.monotonic() < deadline, "a worker outlived its node"
            time.sleep(0.05)
    finally:
        node.kill()
        node.wait()


def test_closed_pool_stops_its_workers_and_refuses_queries(table: Table) -> None:
    pool = Workers(2)
    pool.run(NORMAL, [table], POLICY, Limits())
    pids = worker_pids(pool)
    pool.close()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    with pytest.raises(SandboxError, match="shut down"):
        pool.run(NORMAL, [table], POLICY, Limits())


@pytest.mark.parametrize("size", [0, -1, True, 1.5])
def test_pool_size_is_checked(size: object) -> None:
    with pytest.raises(ValueError, match="size must be an int of at least 1"):
        Workers(size)  # type: ignore[arg-type]
