"""PSI protocol: the pure ECDH-PSI steps in-process, N x N items, vs openmined-psi and raw X25519.

``python -m benchmarks psi_protocol [--items 200000] [--batch 4096] [--workers CORES]``

Two sets of ``--items`` keys each, half of them shared, run through every step of
``veil.protocols.psi`` as the two nodes would, in this one process (no gRPC, no node): hash
both sets to points (``prepare``), blind each side's own points, blind the other side's
points again, shuffle, match. All four blinding passes go through one ``BlindPool`` (set up
before the clock starts, as a node does at start-up) in batches of ``--batch`` points: 4 x N
scalar multiplications.

Reported:
- the raw rate: libsodium's X25519 (``crypto_scalarmult``) in a tight loop on one core, the
  machine's ceiling per core (``openssl speed ecdhx25519`` gives about the same), per wall
  second and per CPU second;
- Veil's blinding rate (scalar multiplications per second over the four passes) as a
  fraction of raw rate x cores (target >= 0.8), its multiplications per worker CPU second
  as a fraction of raw per CPU second (which other load on the machine does not skew:
  it separates Veil's overhead from contention), and end to end (hash + blind + shuffle +
  match) per item;
- openmined-psi (P-256, the PSI a user would pick from PyPI) on the same sets: server
  setup over A, client request over B, the server's answer, the client's cardinality;
  ratio Veil / openmined-psi end to end (target >= 4x). It is not a Veil dependency (it
  pins protobuf==6.30.2, below Veil's floor): ``pip install --no-deps openmined-psi``.

Both cardinalities are checked against the known overlap. Peak memory is this process's
(``ru_maxrss``; it holds both sides' sets) and the largest pool worker's (``VmHWM``).
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import nacl.bindings

from benchmarks._table import header, table, timed, verdict
from veil.protocols import psi


def _sets(n: int) -> tuple[list[str], list[str]]:
    shared = n // 2
    a = [f"shared-{i:09d}" for i in range(shared)] + [f"a-{i:09d}" for i in range(n - shared)]
    b = [f"shared-{i:09d}" for i in range(shared)] + [f"b-{i:09d}" for i in range(n - shared)]
    return a, b


def _batches(packed: bytes, batch: int) -> list[bytes]:
    step = batch * psi.POINT_BYTES
    return [packed[i:i + step] for i in range(0, len(packed), step)]


def raw_rate(points: int = 20_000) -> tuple[float, float]:
    """Scalar multiplications per wall second and per CPU second on one core, libsodium in
    a tight loop."""
    scalar = psi.new_scalar()
    pts = psi.points(psi.prepare(psi.domain("raw"), [str(i) for i in range(points)]))
    mult = nacl.bindings.crypto_scalarmult
    start, cpu = time.perf_counter(), time.process_time()
    for p in pts:
        mult(scalar, p)
    return points / (time.perf_counter() - start), points / (time.process_time() - cpu)


def _cpu_seconds(pid: int) -> float:
    """A live process's user + system CPU seconds (/proc/PID/stat); 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def veil(a_items: list[str], b_items: list[str], pool: psi.BlindPool,
         batch: int) -> tuple[int, dict[str, float]]:
    """The whole protocol as nodes A and B run it; A learns the cardinality."""
    times: dict[str, float] = {}
    dom = psi.domain("bench-psi-protocol")
    start = time.perf_counter()
    a_pts = psi.prepare(dom, a_items)
    b_pts = psi.prepare(dom, b_items)
    times["hash"] = time.perf_counter() - start
    a_key, b_key = psi.new_scalar(), psi.new_scalar()

    def blind_all(scalar: bytes, packed: bytes) -> bytes:
        return b"".join(pool.blind_batches(scalar, _batches(packed, batch)))

    t = time.perf_counter()
    a_once = blind_all(a_key, a_pts)       # A -> B
    b_once = blind_all(b_key, b_pts)       # B -> A
    a_twice = blind_all(b_key, a_once)     # B re-blinds A's points
    b_twice = blind_all(a_key, b_once)     # A re-blinds B's points
    times["blind"] = time.perf_counter() - t
    t = time.perf_counter()
    a_twice = psi.shuffle(a_twice)         # B shuffles before answering: A learns only a count
    found = len(psi.match(b_twice, a_twice))
    times["shuffle+match"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - start
    return found, times


def openmined(a_items: list[str], b_items: list[str]) -> tuple[int, float] | None:
    try:
        import private_set_intersection.python as om  # type: ignore[import-not-found]
    except ImportError:
        return None
    start = time.perf_counter()
    server = om.server.CreateWithNewKey(True)
    client = om.client.CreateWithNewKey(True)
    setup = server.CreateSetupMessage(1e-9, len(b_items), a_items, om.DataStructure.RAW)
    request = client.CreateRequest(b_items)
    response = server.ProcessRequest(request)
    found = int(client.GetIntersectionSize(setup, response))
    return found, time.perf_counter() - start


def _hwm_mib(pid: int) -> float:
    """A live process's peak resident set (VmHWM), in MiB; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks psi_protocol")
    parser.add_argument("--items", type=int, default=200_000, help="items per side")
    parser.add_argument("--batch", type=int, default=4096, help="points per blinding batch")
    parser.add_argument("--workers", type=int, default=None, help="pool size (default: cores)")
    args = parser.parse_args(argv)
    if args.items < 2 or args.batch < 1:
        parser.error("--items must be at least 2 and --batch at least 1")
    cores = len(os.sched_getaffinity(0))
    header(f"psi_protocol: {args.items:,} x {args.items:,} items, half shared, {cores} cores")
    a_items, b_items = _sets(args.items)
    want = args.items // 2

    raw, raw_cpu = raw_rate()
    with psi.BlindPool(workers=args.workers) as pool:
        cpu0 = sum(_cpu_seconds(pid) for pid in pool.worker_pids())
        (found, times), _ = timed(lambda: veil(a_items, b_items, pool, args.batch))
        worker_cpu = sum(_cpu_seconds(pid) for pid in pool.worker_pids()) - cpu0
        workers = pool.workers
        worker_mib = max((_hwm_mib(pid) for pid in pool.worker_pids()), default=0.0)
    if found != want:
        print(f"Veil found {found:,} shared items; expected {want:,}")
        return 1
    mults = 4 * args.items
    rate = mults / times["blind"]
    om = openmined(a_items, b_items)

    rows: list[list[object]] = [
        ["raw X25519, 1 core (libsodium loop)", raw, "", ""],
        ["raw X25519, per CPU second", raw_cpu, "", ""],
        [f"Veil blinding, {workers} workers, 4 x N points", rate, times["blind"], ""],
        ["Veil blinding, per worker CPU second", mults / worker_cpu if worker_cpu else 0.0,
         worker_cpu, ""],
    ]
    rows.append(["Veil end to end (hash+blind+shuffle+match)", 2 * args.items / times["total"],
                 times["total"], 1e6 * times["total"] / (2 * args.items)])
    if om is not None:
        om_found, om_s = om
        if om_found != want:
            print(f"openmined-psi found {om_found:,} shared items; expected {want:,}")
            return 1
        rows.append(["openmined-psi end to end (P-256)", 2 * args.items / om_s, om_s,
                     1e6 * om_s / (2 * args.items)])
    table(["what", "per second", "seconds", "us per item"], rows)
    table(["Veil step", "seconds"], [[k, v] for k, v in times.items()])
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory: this process (both sides' sets) {own:,.0f} MiB, largest "
          f"pool worker {worker_mib:,.0f} MiB")
    verdict(f"Veil blinding rate / (raw rate x {cores} cores)", rate / (raw * cores), 0.8,
            higher_is_better=True)
    if worker_cpu:
        # robust to other load on the machine: the work each worker CPU second does
        print(f"Veil per worker CPU second / raw per CPU second: "
              f"{mults / worker_cpu / raw_cpu:.3f} (1.0 = no overhead beyond libsodium)")
    if om is None:
        print("openmined-psi is not installed (pip install --no-deps openmined-psi): "
              "no side-by-side ratio")
    else:
        verdict("openmined-psi time / Veil time, end to end", om[1] / times["total"], 4.0,
                higher_is_better=True)
    return 0
