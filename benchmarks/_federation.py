"""Three real node processes on loopback for the sum benchmarks (``sum_vector``, ``sum_rows``).

Each node is ``python -m veil.node.cli node serve DIR --listen 127.0.0.1:0`` in a process of
its own, with its own node directory, under one federation made by ``veil.node.pki``; the
dataset is registered before the node starts, and the job is submitted to every node and
approved by each node's operator and subject representative before anything is timed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NODES = ("bank-a", "bank-b", "bank-c")


@dataclass
class Node:
    name: str
    home: Any  # veil.node.home.NodeHome
    proc: subprocess.Popen[str]
    address: str
    csv: Path


@contextmanager
def three_nodes(root: Path, write_csv: Callable[[str, Path], None], *, levels: dict[str, str],
                key_column: str, min_group_size: int = 10) -> Iterator[dict[str, Node]]:
    """Start the three nodes (dataset ``data`` from ``write_csv(name, path)``); stop them after."""
    from veil.node import catalog, pki
    from veil.node.home import init_node

    fed = root / "fed"
    pki.init_federation(fed, "bench")
    for role, name in (("analyst", "alice"), ("operator", "olga"),
                       ("subject-representative", "sam")):
        pki.issue(fed, role, name, root / name)
    nodes: dict[str, Node] = {}
    try:
        for name in NODES:
            home = init_node(root / name, name, federation_dir=fed)
            toml = home.config_path.read_text()
            toml = re.sub(r"(?m)^min_group_size = \d+", f"min_group_size = {min_group_size}",
                          toml)
            home.config_path.write_text(toml)
            csv = root / f"{name}.csv"
            write_csv(name, csv)
            conn, log = home.connect(), home.open_log()
            try:
                catalog.register(conn, log, home.identity, home.snapshots, node=name,
                                 name="data", source=csv, key_column=key_column, levels=levels)
            finally:
                log.close()
                conn.close()
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


def sum_job(nodes: dict[str, Node], key_file: Path, *, columns: Sequence[str],
            group_by: str | None = None, categories: Sequence[str] = (), bound: str,
            scale: int = 0, runs: int = 5) -> str:
    parts = "".join(
        f'[[nodes]]\nname = "{n.name}"\naddress = "{n.address}"\ndataset = "data"\n'
        f'columns = {json.dumps([*columns, *([group_by] if group_by else [])])}\n'
        for n in nodes.values())
    group = (f'group_by = "{group_by}"\ncategories = {json.dumps(list(categories))}\n'
             if group_by else "")
    return f'''purpose = "benchmark"
kind = "sum"
expires = "1d"
[quota]
runs = {runs}
{parts}
[params]
aggregator = "{NODES[0]}"
columns = {json.dumps(list(columns))}
{group}scale = {scale}
bound = "{bound}"
paillier_key = "{key_file}"
'''


def submit_and_approve(root: Path, toml_text: str) -> str:
    """Submit the signed job to every node; the operator and subject representative approve."""
    from veil.node.client import Client, submit_everywhere
    from veil.node.errors import VeilError
    from veil.node.jobs import spec_from_canonical

    answers = submit_everywhere(toml_text, root / "alice", base_dir=Path("/"))
    ids = set()
    for name, job in answers.items():
        if isinstance(job, VeilError):
            raise RuntimeError(f"node {name} refused the job: {job}")
        ids.add(job.id)
        spec = spec_from_canonical(job.canonical)
        part = spec.part(name)
        if part is None or part.address is None:
            raise RuntimeError(f"the job gives no address for node {name}")
        address = part.address
        for approver in ("olga", "sam"):
            with Client(address, root / approver, node=name) as c:
                if c.approve(job.id).state == "approved":
                    break
    (job_id,) = ids
    return job_id


def log_entries(node: Node, job_id: str) -> list[dict[str, Any]]:
    """The node's log entries for ``job_id`` (read from its state; never while it writes)."""
    conn = node.home.connect()
    try:
        rows = conn.execute("SELECT entry FROM log_entries ORDER BY idx").fetchall()
    finally:
        conn.close()
    out = [json.loads(bytes(r[0])) for r in rows]
    return [e for e in out if e.get("job") == job_id]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped children (/proc/PID/stat)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (the node and its sandbox workers)."""
    total = cpu_seconds(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for c in children:
        try:
            total += tree_cpu_seconds(int(c))
        except OSError:
            pass
    return total
