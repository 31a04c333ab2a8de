"""PSI end to end: two node processes on loopback, N x N keys, vs openmined-psi and raw X25519.

``python -m benchmarks psi [--items 1000000] [--openmined-items N] [--profile DIR]``

Two nodes (``veil node serve`` in a process of its own each, its own node directory, one
federation made by ``veil.node.pki``) hold ``--items`` keys each, half of them shared
(``shared-000000001`` ...), registered as dataset ``customers`` before the nodes start. A
cardinality job (``normalize = "exact"``) is submitted to both and approved by each node's
operator and subject representative before anything is timed. Timed, twice: the analyst's
``Client.run_psi`` at the leader, from the RunPsi call to the count. The cold first run
includes each node starting its blind pool (``NodeContext.psi_pool``: ``warm_psi``, meant to
start it when a PSI job is submitted, is called nowhere); the warm second run is the steady
state that the rates and ratios use. In each, each node reads its snapshot, normalizes, hashes to X25519, blinds its own set and the
peer's (4 x N scalar multiplications between them), streams packed batches over one
mTLS bidirectional stream, matches, logs and answers. The count is checked against the known
overlap.

Side by side, in the same run:
- raw X25519: libsodium's ``crypto_scalarmult`` in a tight loop on one core, measured
  here before the nodes start (``benchmarks.psi_protocol.raw_rate``); Veil's rate is
  4 x N / the end-to-end wall time, as a fraction of raw x cores (target >= 0.8). Both
  nodes share this machine's cores, so the ceiling is the machine's, not a node's.
- openmined-psi (P-256, the PSI a user picks from PyPI; ``pip install --no-deps
  openmined-psi``) on the same sets, in this process, on one core as the library runs.
  With ``--openmined-items M`` below ``--items`` it runs on M x M (the first M keys of
  each set, the same half shared) and its time is scaled linearly to N; the output says so.

Memory: each node's peak resident set with its children (the blind pool's forkserver and
workers, the sandbox worker) two ways: the sum of every process's own peak (``VmHWM``,
an upper bound: their peaks need not coincide and forked pages count twice) and the peak of
the summed resident sets sampled every 0.2 s during both runs (target <= 1 GiB).

``--profile DIR`` runs ``py-spy record --subprocesses`` on each node during the warm run
and prints where each node's samples fall (the leaf function and its share, the leading
functions by inclusive share); raw collapsed stacks stay in DIR. A per-second timeline of
the warm run shows the cores each node used, those other processes took, and idle ones.

Measured here (2 cores shared with other work; 2026-12-04, 1,000,000 x 1,000,000): warm run
106 s, 0.78 of raw x 2 cores, while other processes held 0.30 of the 2 cores; the nodes'
CPU is 92% scalar multiplications (py-spy: 94-95% of each node's busy samples are
``crypto_scalarmult`` in ``protocols/psi.py blind`` on the pool workers; loading, hashing,
matching and pickling batches to the workers are each under 1.5%). Peak memory 684 and
614 MiB. openmined-psi 372 s (scaled from 250,000), 3.5x. Even at 100% of raw x 2 cores
Veil takes 4N / (2 x raw) = 83 s: the 4x target needs >= 0.89 of the ceiling on 2 cores.
The cold run was 15-20 s slower until submitting a PSI job started the node's pool
(``NodeContext.warm_psi``). On the quiet machine afterwards, twice: warm 91.0 / 91.2 s,
0.904 / 0.898 of raw x 2 cores, openmined 4.21x / 4.16x, cold run within 1 s of warm,
peak memory 688 / 607 and 621 / 625 MiB.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks._federation import Node, log_entries, submit_and_approve, tree_cpu_seconds
from benchmarks._table import header, table, timed, verdict
from benchmarks.psi_protocol import openmined, raw_rate

#: the leader (first node) and the other node
PSI_NODES = ("bank", "telco")


def key_sets(n: int) -> tuple[list[str], list[str]]:
    """Two sets of ``n`` keys, the first ``n // 2`` of each shared."""
    shared = n // 2
    a = [f"shared-{i:09d}" for i in range(shared)] + [f"a-{i:09d}" for i in range(n - shared)]
    b = [f"shared-{i:09d}" for i in range(shared)] + [f"b-{i:09d}" for i in range(n - shared)]
    return a, b


def write_keys(path: Path, name: str, keys: list[str]) -> None:
    with path.open("w") as f:
        f.write("id,key\n")
        f.write("".join(f"{name}-{i},{k}\n" for i, k in enumerate(keys)))


@contextmanager
def two_nodes(root: Path, write_csv: Callable[[str, Path], None], *, levels: dict[str, str],
              key_column: str = "id") -> Iterator[dict[str, Node]]:
    """Start ``bank`` and ``telco`` (dataset ``customers`` from ``write_csv(name, path)``),
    each ``veil node serve`` in its own process; stop them after. ``levels`` may name
    columns only one node's file has."""
    from veil.node import catalog, pki
    from veil.node.home import init_node

    fed = root / "fed"
    pki.init_federation(fed, "bench")
    for role, name in (("analyst", "alice"), ("operator", "olga"),
                       ("subject-representative", "sam")):
        pki.issue(fed, role, name, root / name)
    nodes: dict[str, Node] = {}
    try:
        for name in PSI_NODES:
            home = init_node(root / name, name, federation_dir=fed)
            csv = root / f"{name}.csv"
            write_csv(name, csv)
            with csv.open() as f:
                present = f.readline().strip().split(",")
            conn, log = home.connect(), home.open_log()
            try:
                catalog.register(conn, log, home.identity, home.snapshots, node=name,
                                 name="customers", source=csv, key_column=key_column,
                                 levels={c: v for c, v in levels.items() if c in present})
            finally:
                log.close()
                conn.close()
            csv.unlink()
            proc = subprocess.Popen(
                [sys.executable, "-m", "veil.node.cli", "node", "serve", str(home.path),
                 "--listen", "127.0.0.1:0"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            m = re.search(r"listening on (\S+)", line)
            if m is None:
                proc.kill()
                raise RuntimeError(f"node {name} did not start: {line}{proc.stdout.read()}")
            nodes[name] = Node(name, home, proc, m.group(1), csv)
        yield nodes
    finally:
        for n in nodes.values():
            n.proc.terminate()
        for n in nodes.values():
            try:
                n.proc.wait(10)
            except subprocess.TimeoutExpired:
                n.proc.kill()


def psi_job(nodes: dict[str, Node], *, kind: str = "psi",
            columns: dict[str, list[str]] | None = None, params: str = "") -> str:
    columns = columns or {n: ["key"] for n in nodes}
    parts = "".join(
        f'[[nodes]]\nname = "{n.name}"\naddress = "{n.address}"\ndataset = "customers"\n'
        f'columns = {columns[n.name]!r}\n'.replace("'", '"') for n in nodes.values())
    return f'''purpose = "benchmark"
kind = "{kind}"
expires = "1d"
[quota]
runs = 3
{parts}
[params]
key = "key"
normalize = "exact"
{params}'''


# --------------------------------------------------------------------------- processes


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    out = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for c in children:
        out += descendants(int(c))
    return out


def _status_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def hwm_mib(pid: int) -> tuple[float, float, int]:
    """(the process's own peak MiB, the sum of its and its descendants' peaks, processes)."""
    pids = descendants(pid)
    return (_status_kib(pid, "VmHWM") / 1024,
            sum(_status_kib(p, "VmHWM") for p in pids) / 1024, len(pids))


class RssSampler:
    """The peak of the summed resident sets of each node's process tree, every 0.2 s."""

    def __init__(self, nodes: dict[str, Node]) -> None:
        self.nodes = nodes
        self.peak = {n: 0.0 for n in nodes}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for name, node in self.nodes.items():
                rss = sum(_status_kib(p, "VmRSS") for p in descendants(node.proc.pid)) / 1024
                self.peak[name] = max(self.peak[name], rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - idle) / tick, sum(fields[:8]) / tick


class Timeline:
    """Each node's CPU (with its children) and the whole machine's, sampled every second:
    shows the phases of a run in which cores sit idle or other work takes them."""

    def __init__(self, nodes: dict[str, Node]) -> None:
        self.nodes = nodes
        self.samples: list[tuple[float, dict[str, float], tuple[float, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        cpu = {}
        for name, node in self.nodes.items():
            try:
                cpu[name] = tree_cpu_seconds(node.proc.pid)
            except OSError:
                cpu[name] = 0.0
        self.samples.append((time.perf_counter(), cpu, machine_busy()))

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self._sample()

    def __enter__(self) -> Timeline:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def print(self, buckets: int = 10) -> None:
        """The run in ``buckets`` equal slices: cores used by each node, by everything else."""
        s = self.samples
        if len(s) < 3:
            return
        cores = len(os.sched_getaffinity(0))
        t0, t1 = s[0][0], s[-1][0]
        cuts = sorted({round(i * (len(s) - 1) / buckets) for i in range(buckets + 1)})
        rows = []
        for i, j in zip(cuts, cuts[1:]):
            a, z = s[i], s[j]
            dt = z[0] - a[0]
            used = {n: (z[1][n] - a[1][n]) / dt for n in self.nodes}
            ticks = z[2][1] - a[2][1]
            busy = (z[2][0] - a[2][0]) / ticks * cores if ticks > 0 else 0.0
            rows.append([f"{a[0] - t0:.0f}-{z[0] - t0:.0f} s", *used.values(),
                         max(0.0, busy - sum(used.values())), max(0.0, cores - busy)])
        table(["slice of the run", *[f"{n} cores" for n in self.nodes], "other processes",
               "idle cores"], rows)
        busy = (s[-1][2][0] - s[0][2][0]) / (s[-1][2][1] - s[0][2][1]) * cores
        nodes = sum(s[-1][1][n] - s[0][1][n] for n in self.nodes) / (t1 - t0)
        print(f"whole run: the nodes used {nodes:.2f} of {cores} cores, other processes "
              f"{max(0.0, busy - nodes):.2f}, idle {max(0.0, cores - busy):.2f}\n")


# --------------------------------------------------------------------------- profiling


@contextmanager
def profiled(nodes: dict[str, Node], out: Path | None) -> Iterator[dict[str, Path]]:
    """py-spy record on each node (and its subprocesses) while the block runs."""
    if out is None:
        yield {}
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out.mkdir(parents=True, exist_ok=True)
    files = {n: out / f"{n}.txt" for n in nodes}
    procs = [subprocess.Popen([spy, "record", "--pid", str(node.proc.pid), "--subprocesses",
                               "--format", "raw", "--rate", "50", "--nonblocking", "-o",
                               str(files[name])],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for name, node in nodes.items()]
    time.sleep(2.0)  # py-spy attaches
    try:
        yield files
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()


def profile_tables(files: dict[str, Path], top: int = 12) -> None:
    """Leaf (self) and inclusive shares of each node's samples, by function."""
    for name, path in files.items():
        if not path.exists():
            print(f"{name}: py-spy wrote no profile ({path})")
            continue
        leaf: collections.Counter[str] = collections.Counter()
        incl: collections.Counter[str] = collections.Counter()
        total = 0
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [_frame(f) for f in stack.split(";")]
            frames = [f for f in frames if f]
            idle = frames and frames[-1].startswith(("wait ", "_wait_for_tstate_lock ",
                                                     "select ", "get ", "_recv ", "poll "))
            if idle:
                continue  # an idle thread waiting; py-spy --idle is off, but wait() shows
            total += n
            if frames:
                leaf[frames[-1]] += n
            for f in set(frames):
                incl[f] += n
        if not total:
            continue
        print(f"py-spy, node {name} and its subprocesses: {total:,} busy samples at 50 Hz")
        table(["leaf function (self time)", "share"],
              [[f, c / total] for f, c in leaf.most_common(top)])
        table(["function (inclusive)", "share"],
              [[f[:100], c / total] for f, c in incl.most_common(3 * top)
               if not f.startswith(_PLUMBING)][:top])


#: frames every sample of a process or a pool worker has (not where time goes)
_PLUMBING = ("process ", "main(", "<module>", "BaseProcess.", "_main ", "_serve_one ",
             "_process_worker ", "Thread.run ", "Thread._bootstrap")


def _frame(frame: str) -> str:
    # py-spy raw frames: "function (path/file.py:line)"; keep function and file:line
    m = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame.strip())
    if m is None:
        return frame.strip()
    fn, path = m.groups()
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{fn} ({short})"


# --------------------------------------------------------------------------- the run


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks psi")
    ap.add_argument("--items", type=int, default=1_000_000, help="keys per node")
    ap.add_argument("--openmined-items", type=int, default=None,
                    help="keys per side for openmined-psi (default --items; below it, its "
                         "time is scaled linearly to --items)")
    ap.add_argument("--profile", type=Path, default=None,
                    help="run py-spy on both nodes during the timed run, stacks in this dir")
    args = ap.parse_args(argv)
    if args.items < 400:
        ap.error("--items must be at least 400 (each node's min_peer_set_size is 100)")
    om_items = args.items if args.openmined_items is None else args.openmined_items
    if not 2 <= om_items <= args.items:
        ap.error("--openmined-items must be between 2 and --items")
    cores = len(os.sched_getaffinity(0))
    n = args.items
    header(f"psi: {n:,} x {n:,} keys, half shared, 2 node processes on loopback, {cores} cores "
           f"(load average before: {os.getloadavg()[0]:.2f})")
    from veil.node.client import Client

    raw, raw_cpu = raw_rate()
    a_keys, b_keys = key_sets(n)
    sets = dict(zip(PSI_NODES, (a_keys, b_keys)))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        setup = time.perf_counter()
        with two_nodes(root, lambda name, path: write_keys(path, name, sets[name]),
                       levels={"key": "sensitive"}) as nodes:
            job_id = submit_and_approve(root, psi_job(nodes))
            print(f"set-up (not timed): 2 nodes, {n:,} rows each registered, job submitted "
                  f"and approved, in {time.perf_counter() - setup:.1f} s")
            leader = nodes[PSI_NODES[0]]
            runs: list[tuple[str, Any, float]] = []
            with Client(leader.address, root / "alice", node=leader.name,
                        timeout=3600) as alice, RssSampler(nodes) as rss:
                alice.job(job_id)  # connect outside the measurement
                out, cold = timed(lambda: alice.run_psi(job_id))
                runs.append(("cold", out, cold))
                cpu0 = {k: tree_cpu_seconds(v.proc.pid) for k, v in nodes.items()}
                with profiled(nodes, args.profile) as prof, Timeline(nodes) as line:
                    out, wall = timed(lambda: alice.run_psi(job_id))
                runs.append(("warm", out, wall))
                cpu = {k: tree_cpu_seconds(v.proc.pid) - cpu0[k] for k, v in nodes.items()}
            mem = {k: hwm_mib(v.proc.pid) for k, v in nodes.items()}
            entries = {k: [e for e in log_entries(v, job_id) if "Psi" in e.get("method", "")]
                       for k, v in nodes.items()}
    for label, got, _ in runs:
        if got.cardinality != n // 2:
            print(f"Veil's {label} run found {got.cardinality:,} shared keys; expected "
                  f"{n // 2:,}")
            return 1
    print(f"Veil's cardinality (both runs) {out.cardinality:,} = the known overlap; set "
          f"sizes {out.set_size:,} and {out.peer_set_size:,}\n")

    om = openmined(a_keys[:om_items // 2] + a_keys[n // 2:n // 2 + om_items - om_items // 2],
                   b_keys[:om_items // 2] + b_keys[n // 2:n // 2 + om_items - om_items // 2])
    om_s: float | None = None
    om_note = ""
    if om is not None:
        om_found, om_raw = om
        if om_found != om_items // 2:
            print(f"openmined-psi found {om_found:,} shared keys; expected {om_items // 2:,}")
            return 1
        om_s = om_raw * n / om_items
        if om_items != n:
            om_note = f" (SCALED linearly from {om_items:,} x {om_items:,}: {om_raw:.1f} s)"

    mults = 4 * n
    rate = mults / wall
    rows: list[list[object]] = [
        ["raw X25519, 1 core (libsodium loop)", "", raw, ""],
        [f"raw X25519 x {cores} cores (the machine's ceiling)", "", raw * cores, ""],
        ["Veil cold run (starts both blind pools)", cold, mults / cold,
         "" if om_s is None else om_s / cold],
        ["Veil warm run: Client.run_psi, 2 nodes", wall, rate, ""],
    ]
    if om_s is not None:
        rows.append([f"openmined-psi (P-256), 1 process{om_note}", om_s, mults / om_s,
                     om_s / wall])
    table(["what", "wall s", "scalar mults / s (4N / wall)", "openmined / veil (x)"], rows)
    print("the warm run, second by second (cores in use; 1.0 = one core busy):")
    line.print()
    print("CPU: the warm run; memory: peaks over both runs")
    table(["node", "CPU s (+children)", "own peak MiB", "sum of peaks MiB (procs)",
           "sampled peak MiB"],
          [[k, cpu[k], mem[k][0], f"{mem[k][1]:,.0f} ({mem[k][2]})", rss.peak[k]]
           for k in PSI_NODES])
    total_cpu = sum(cpu.values())
    print(f"CPU seconds of both nodes: {total_cpu:.1f} over {wall:.1f} s wall on {cores} "
          f"cores ({total_cpu / (wall * cores):.0%} of the machine); 4N mults at the raw "
          f"rate need {mults / raw_cpu:.1f} CPU s ({mults / raw_cpu / total_cpu:.0%} of "
          f"the nodes' CPU)")
    print(f"load average after: {os.getloadavg()[0]:.2f} (other work on the machine "
          "lowers every Veil rate here)\n")
    meter_rows = [[k, e["method"].rsplit("/", 1)[1], e.get("status"),
                   e.get("meters", {}).get("items", 0), e.get("meters", {}).get("bytes_out", 0)]
                  for k in PSI_NODES for e in entries[k]]
    table(["node", "method", "status", "items", "bytes_out"], meter_rows)
    if prof:
        profile_tables(prof)
    verdict(f"Veil scalar mults per s / (raw x {cores} cores)", rate / (raw * cores), 0.8,
            higher_is_better=True)
    for k in PSI_NODES:
        verdict(f"node {k} peak memory, sum of its processes' peaks (MiB)", mem[k][1], 1024,
                higher_is_better=False)
    if om_s is None:
        print("openmined-psi is not installed (pip install --no-deps openmined-psi): "
              "no side-by-side ratio")
    else:
        verdict("openmined-psi time / Veil time, end to end", om_s / wall, 4.0,
                higher_is_better=True)
    return 0
