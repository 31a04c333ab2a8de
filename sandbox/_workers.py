"""Workers: run sandbox queries in a pool of warm worker processes, each under OS limits.

Why processes. Inside one process the engine's limits are cooperative: the watchdog's
``interrupt()`` is only seen between DuckDB's chunks (one chunk of ``regexp_matches`` over
strings built in post-processing layers ran 7 s under a 2 s limit), DuckDB's
``memory_limit`` covers its buffer manager but not every allocation of an expression or of
the result's conversion to Python, and the GIL makes every query's conversion work queue
behind every other. A worker process turns each limit into one the operating system keeps:

- **Time.** The worker's own watchdog interrupts the query at ``Limits.timeout_s`` (the
  graceful path: the worker stays warm). If no answer has come ``GRACE_S`` later, the node
  kills the worker (SIGKILL, which no computation can ignore) and answers ``timeout``; a fresh
  worker replaces it on the next query.
- **Memory.** Each worker runs under ``RLIMIT_DATA`` (its heap and private mappings): its own
  footprint when it became ready, plus ``Limits.memory_limit_mb``, plus ``HEADROOM_MB`` for the
  result's conversion. An allocation past it fails inside the worker (DuckDB's out-of-memory
  error, or Python's ``MemoryError``) and the query ends with ``memory``; a worker that dies
  instead is replaced, and the query ends with ``memory`` too. The node's own memory never
  holds a query's intermediate values, so its health check answers whatever a query does.
- **No files.** ``RLIMIT_FSIZE`` is 0 and ``RLIMIT_CORE`` 0 in the worker, beneath the
  engine's own lockdown (no external access, ``allowed_paths`` only the snapshots).

The pool holds at most ``size`` workers (``[limits] workers`` in node.toml), started on
demand and reused: each keeps its engine's caches (connections, snapshot facts) warm, and a
query goes preferably to an idle worker that has already read its snapshot. When all are busy
a query waits for one, up to its own time limit, and then ends with ``busy``.

What crosses the boundary. The node sends the SQL, the tables, the policy and the limits; the
worker validates and runs the query and sends back the result (its arrays, meters and digest)
or the error (its class and fields, never a traceback). The node decodes the answer with an
unpickler that admits only numpy arrays, exact scalar types (Decimal, date/time, UUID) and
builtin containers, so a worker, whatever ran inside it, cannot make the node run code. A
differentially private query (``run_dp``, the task ``"dp"``) comes back as its exact integer
vectors, meters and capping flag in builtin ints, tuples and a dict, so the unpickler admits
nothing new for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import pickle
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from veil.sandbox._dp import DpExact, DpSpec
from veil.sandbox._errors import QueryLimitExceeded, QueryRejected, SandboxError
from veil.sandbox._model import Limits, Meters, Policy, QueryResult, Table

GRACE_S = 0.5  # how long past its time limit a query's worker may take to answer
HEADROOM_MB = 512  # a worker's memory beyond the query's own limit: result conversion
START_TIMEOUT_S = 60.0  # a worker that is not ready by then is broken


class Workers:
    """A pool of at most ``size`` sandbox worker processes; thread-safe; close() when done."""

    def __init__(self, size: int, *, headroom_mb: int = HEADROOM_MB) -> None:
        for name, value, low in (("size", size, 1), ("headroom_mb", headroom_mb, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int of at least {low}, got {value!r}")
        self.size, self.headroom_mb = size, headroom_mb
        self._idle: list[_Worker] = []
        self._count = 0  # workers alive or being started
        self._cond = threading.Condition()
        self._closed = False

    def run(
        self, sql: str, tables: Sequence[Table], policy: Policy, limits: Limits
    ) -> QueryResult:
        """Validate and run ``sql`` in a worker: what ``run(validate(...))`` returns, with
        the limits held by the operating system. Raises what validate() and run() raise, and
        QueryLimitExceeded("busy") when no worker was free within the query's time limit."""
        tables = tuple(tables)
        paths = frozenset(t.path for t in tables)
        return _answer(self._ask("run", (sql, tables, policy), paths, limits))

    def run_dp(
        self, sql: str, table: Table, policy: Policy, limits: Limits, spec: DpSpec
    ) -> DpExact:
        """Validate and run ``sql`` on the differentially private path in a worker: what
        ``run_dp(validate_dp(...))`` returns (the exact values: they stay in the node), with
        the same limits held by the operating system as :meth:`run`."""
        if not isinstance(table, Table):
            raise TypeError(f"table must be a Table, got {type(table).__name__}")
        return _dp_answer(self._ask("dp", (sql, table, policy, spec), frozenset({table.path}),
                                    limits))

    def _ask(
        self, kind: str, args: tuple[Any, ...], paths: frozenset[str], limits: Limits
    ) -> Any:
        """Send one task to a worker; return its result, or raise its error."""
        if not isinstance(limits, Limits):
            raise TypeError(f"limits must be a Limits, got {type(limits).__name__}")
        worker = self._take(paths, limits)
        answer: tuple[Any, ...] = _DIED
        reusable = False
        try:
            task = (kind, args, limits, self.headroom_mb)
            answer, reusable = worker.ask(task, limits.timeout_s + GRACE_S)
        finally:
            self._give(worker, paths, reusable)
        if answer is _DIED:
            if worker.killed:
                raise QueryLimitExceeded(
                    "timeout", f"the query ran longer than the limit of {limits.timeout_s:g} s"
                )
            raise QueryLimitExceeded(
                "memory",
                f"the query's worker process ended ({worker.how_it_ended()}); queries may use "
                f"{limits.memory_limit_mb:,} MB",
            )
        if answer[0] == "ok":
            return answer[1]
        error, fields = answer[1], answer[2]
        if error == "rejected":
            raise QueryRejected(*fields)
        if error == "limit":
            raise QueryLimitExceeded(*fields)
        raise SandboxError(*fields)

    def close(self) -> None:
        """Stop every worker: idle ones at once, busy ones when their query returns."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for w in idle:
            w.stop()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take(self, paths: frozenset[str], limits: Limits) -> _Worker:
        deadline = time.monotonic() + limits.timeout_s
        with self._cond:
            while True:
                if self._closed:
                    raise SandboxError("the sandbox workers are shut down")
                if self._idle:
                    # the most recently used worker that has read these snapshots, else any
                    for i in range(len(self._idle) - 1, -1, -1):
                        if paths <= self._idle[i].seen:
                            return self._idle.pop(i)
                    return self._idle.pop()
                if self._count < self.size:
                    self._count += 1
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise QueryLimitExceeded(
                        "busy",
                        f"all {self.size} sandbox workers stayed busy for "
                        f"{limits.timeout_s:g} s; try again later",
                    )
                self._cond.wait(left)
        try:  # started outside the lock: other queries go on meanwhile
            return _Worker.start()
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise

    def _give(self, worker: _Worker, paths: frozenset[str], healthy: bool) -> None:
        with self._cond:
            if healthy and not self._closed:
                worker.seen |= paths
                self._idle.append(worker)
            else:
                self._count -= 1
            self._cond.notify()
        if not healthy or self._closed:
            worker.stop()


# --------------------------------------------------------------------------- node side

_MAIN = "import sys; from veil.sandbox._workers import _serve; _serve(int(sys.argv[1]))"

_DIED = ("died",)


class _Worker:
    """One worker process and the node's end of its socket."""

    def __init__(self, proc: subprocess.Popen[bytes], conn: Connection) -> None:
        self.proc, self.conn = proc, conn
        self.seen: frozenset[str] = frozenset()
        self.killed = False

    @classmethod
    def start(cls) -> _Worker:
        ours, theirs = socket.socketpair()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _MAIN, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                close_fds=True,
            )
        finally:
            theirs.close()
        worker = cls(proc, Connection(ours.detach()))
        if not worker.conn.poll(START_TIMEOUT_S):
            worker.stop()
            raise SandboxError(f"a sandbox worker did not start within {START_TIMEOUT_S:g} s")
        try:
            ready = worker.conn.recv_bytes()
        except (EOFError, OSError):
            ready = b""
        if ready != b"ready":
            worker.stop()
            raise SandboxError(f"a sandbox worker failed to start ({worker.how_it_ended()})")
        return worker

    def ask(self, task: tuple[Any, ...], timeout: float) -> tuple[tuple[Any, ...], bool]:
        """Send one task and wait for its answer, killing the worker at ``timeout``; return
        the answer and whether the worker may take another task."""
        try:
            self.conn.send_bytes(pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL))
            if not self.conn.poll(timeout):
                self.killed = True
                self.proc.kill()
                return _DIED, False
            answer = _loads(self.conn.recv_bytes())
        except (EOFError, OSError):
            return _DIED, False
        if answer[0] == "retire":  # an error after which the worker must not be reused
            return answer[1:], False
        return answer, True

    def how_it_ended(self) -> str:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "still running"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit status {code}"

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


def _answer(payload: Any) -> QueryResult:
    columns, types_, arrays, suppressed, meters, digest, tables_used = payload
    for array in arrays.values():
        array.flags.writeable = False  # the digest vouches for these values
    return QueryResult(
        columns=tuple(columns),
        types=tuple(types_),
        arrays=types.MappingProxyType(dict(arrays)),
        suppressed_groups=int(suppressed),
        meters=Meters(**meters),
        digest=str(digest),
        tables_used=tuple(tables_used),
    )


def _dp_answer(payload: Any) -> DpExact:
    try:
        values, meters, capped = payload
        values = tuple(tuple(vector) for vector in values)
        if not all(type(v) is int for vector in values for v in vector):
            raise TypeError("exact values must be ints")
        return DpExact(values=values, meters=Meters(**meters), capped=capped is True)
    except (TypeError, ValueError):
        raise SandboxError("a sandbox worker sent exact values of the wrong shape") from None


_ALLOWED = {
    ("numpy", "dtype"), ("numpy", "ndarray"),
    ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
    ("numpy.ma.core", "_mareconstruct"), ("numpy.ma.core", "MaskedArray"),
    ("numpy.ma", "MaskedArray"),
    ("decimal", "Decimal"), ("uuid", "UUID"), ("uuid", "SafeUUID"),
    ("datetime", "datetime"), ("datetime", "date"), ("datetime", "time"),
    ("datetime", "timedelta"), ("datetime", "timezone"),
    ("builtins", "int"), ("builtins", "set"), ("builtins", "frozenset"),
}  # fmt: skip


class _Unpickler(pickle.Unpickler):
    """Admits only the classes a result is made of: a worker cannot make the node run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"a sandbox worker sent {module}.{name}, not allowed")
        return super().find_class(module, name)


def _loads(data: bytes) -> tuple[Any, ...]:
    try:
        answer = _Unpickler(io.BytesIO(data)).load()
    except Exception as exc:  # anything malformed is the worker's fault, never the query's
        raise SandboxError(f"a sandbox worker sent an answer that cannot be read: {exc}") from None
    if not isinstance(answer, tuple) or not answer or answer[0] not in ("ok", "err", "retire"):
        raise SandboxError("a sandbox worker sent an answer of the wrong shape")
    return answer


# --------------------------------------------------------------------------- worker side


def _data_limit(limits: Limits, headroom_mb: int, baseline: int) -> int:
    return baseline + (limits.memory_limit_mb + headroom_mb) * 1024 * 1024


def _oom(limits: Limits) -> str:
    return f"the query needed more than the memory limit of {limits.memory_limit_mb:,} MB"


def _vm_data() -> int:
    """This process's VmData (heap and private mappings) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def _serve(fd: int) -> None:
    """The worker's loop: one task at a time, until the node closes the socket or dies."""
    import duckdb

    from veil.sandbox._dp import run_dp, validate_dp
    from veil.sandbox._engine import _watchdog, run
    from veil.sandbox._query import validate

    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    conn = Connection(fd)
    with duckdb.connect(":memory:") as con:  # DuckDB's own start-up belongs to the baseline
        con.execute("SELECT 1").fetchall()
    _watchdog.start()  # as is the watchdog's thread
    baseline = _vm_data()
    hard = resource.getrlimit(resource.RLIMIT_DATA)[1]  # soft limits go up and down below it
    conn.send_bytes(b"ready")
    while True:
        try:
            task = pickle.loads(conn.recv_bytes())  # from the node that started us
        except (EOFError, OSError):
            return  # the node is gone or closed us
        kind, args, limits, headroom_mb = task
        resource.setrlimit(resource.RLIMIT_DATA, (_data_limit(limits, headroom_mb, baseline), hard))
        retire = False
        try:
            answer: tuple[Any, ...]
            if kind == "dp":
                sql, table, policy, spec = args
                exact = run_dp(validate_dp(sql, table, policy, limits, spec), limits)
                answer = ("ok", (exact.values, dataclasses.asdict(exact.meters), exact.capped))
            else:
                sql, tables, policy = args
                result = run(validate(sql, tables, policy, limits), limits)
                answer = ("ok", (
                    result.columns, result.types, dict(result.arrays), result.suppressed_groups,
                    dataclasses.asdict(result.meters), result.digest, result.tables_used,
                ))
        except QueryRejected as exc:
            answer = ("err", "rejected", (exc.construct, exc.reason))
        except QueryLimitExceeded as exc:
            answer = ("err", "limit", (exc.limit, str(exc)))
        except SandboxError as exc:
            answer = ("err", "sandbox", (str(exc),))
        except MemoryError:
            retire = True
            answer = ("err", "limit", ("memory", _oom(limits)))
        except Exception as exc:  # a bug of ours: say what, never the data
            retire = True
            answer = ("err", "sandbox", (f"the sandbox failed ({type(exc).__name__})",))
        try:
            reply = pickle.dumps(("retire", *answer) if retire else answer,
                                 protocol=pickle.HIGHEST_PROTOCOL)
        except MemoryError:  # the answer itself is past the limit: say so, in a few bytes
            retire = True
            reply = pickle.dumps(("retire", "err", "limit", ("memory", _oom(limits))))
        try:
            conn.send_bytes(reply)
        except OSError:
            return
        if retire:
            return

