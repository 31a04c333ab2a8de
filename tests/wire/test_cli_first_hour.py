"""A newcomer's first commands: discoverable groups, one node per directory, no gRPC core
noise, decisions spelled out."""

from __future__ import annotations

import re
import socket
import pytest

from veil.node.errors import ConfigError
from veil.node.home import NodeHome
from veil.node.server import start

from tests.conftest import ServeProcess, run_cli

GRPC_CORE_LINE = re.compile(r"^[EWID]\d{4} |add_port\.cc|Handshake failed|ev_poll", re.M)


def test_veil_alone_and_each_group_alone_print_their_commands() -> None:
    r = run_cli()
    assert r.returncode == 2
    for group in ("pki", "node", "dataset", "job", "run", "keys", "audit", "usage", "query"):
        assert f"    {group} " in r.stdout, group
    r = run_cli("job")
    assert r.returncode == 2 and "the following arguments are required" not in r.stderr
    for verb in ("submit", "list", "show", "approve", "reject", "revoke"):
        assert f"    {verb} " in r.stdout, verb
    r = run_cli("node")
    assert all(f"    {v} " in r.stdout for v in ("init", "serve", "stop"))
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("veil ")


def test_a_second_server_on_a_served_node_directory_is_refused_naming_the_first(
    node_home: NodeHome,
) -> None:
    first = ServeProcess(node_home.path)
    try:
        r = run_cli("node", "serve", str(node_home.path), "--listen", "127.0.0.1:0")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "already being served" in r.stderr
        assert f"pid {first.proc.pid} at {first.address}" in r.stderr
        assert not GRPC_CORE_LINE.search(r.stderr), r.stderr
        with pytest.raises(ConfigError, match="already being served"):  # in-process too
            start(node_home.path, "127.0.0.1:0")
    finally:
        first.terminate()
    again = start(node_home.path, "127.0.0.1:0")  # the lock goes with the server
    again.stop(grace=1)


def test_a_port_in_use_gets_one_line_and_no_grpc_core_log(node_home: NodeHome) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_cli("node", "serve", str(node_home.path), "--listen", f"127.0.0.1:{port}")
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr
    assert not GRPC_CORE_LINE.search(r.stderr), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_quota_smaller_than_one_run_is_flagged_at_submission(
    running, federation, tmp_path  # type: ignore[no-untyped-def]
) -> None:
    from tests.wire.test_jobs_wire import job_toml

    spec = tmp_path / "job.toml"
    spec.write_text(job_toml().replace("[quota]\n", "[quota]\nrows_scanned = 10\n"))
    alice = str(federation.identity("analyst", "alice"))
    r = run_cli("job", "submit", str(spec), "--node", running.address, "--identity", alice)
    assert r.returncode == 0, r.stderr
    assert "warning: the quota's rows_scanned (10) is less than one run scans (60)" in r.stderr
    job = r.stdout.split("job ")[1].split()[0]
    r = run_cli("job", "show", job, "--node", running.address, "--identity", alice)
    assert "estimate: warning: the quota's rows_scanned (10)" in r.stdout


def test_the_sdk_takes_a_job_file_or_its_text_and_marks_the_latest_dataset_version(
    running, federation, tmp_path, client_for  # type: ignore[no-untyped-def]
) -> None:
    from veil.node import catalog

    from tests.conftest import write_customers
    from tests.wire.test_jobs_wire import job_toml

    alice = client_for("analyst", "alice")
    spec = tmp_path / "job.toml"
    spec.write_text(job_toml())
    by_path = alice.submit_job(spec)
    by_name = alice.submit_job(str(spec))  # a one-line string naming a .toml file
    by_text = alice.submit_job(job_toml(purpose="The same study, from text"))
    assert by_path.purpose == by_name.purpose == "Spend by region for a footprint study"
    assert by_text.purpose == "The same study, from text"
    home = running.ctx.home
    conn, log = home.connect(), home.open_log()
    try:
        catalog.register(conn, log, home.identity, home.snapshots, node=home.config.name,
                         name="customers", source=write_customers(tmp_path / "v2.csv", 70),
                         key_column="customer_id", levels={})
    finally:
        log.close()
        conn.close()
    versions = [(v.name, v.version, v.latest) for v in alice.datasets()]
    assert versions == [("customers", 1, False), ("customers", 2, True)]
    assert [v.latest for v in alice.dataset("customers")] == [False, True]


def test_pki_issue_for_a_name_with_a_valid_certificate_needs_rotate_and_records_it(
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    import json

    fed = tmp_path / "fed"
    assert run_cli("pki", "init", str(fed), "--federation", "f").returncode == 0
    first = run_cli("pki", "issue", str(fed), "--role", "analyst", "--name", "alice", "--out",
                    str(tmp_path / "a1"))
    assert first.returncode == 0, first.stderr
    serial = first.stdout.split("(serial ")[1].split(")")[0]
    again = run_cli("pki", "issue", str(fed), "--role", "analyst", "--name", "alice", "--out",
                    str(tmp_path / "a2"))
    assert again.returncode == 1 and "already has a valid certificate" in again.stderr
    assert serial in again.stderr and "--rotate" in again.stderr
    assert not (tmp_path / "a2").exists()  # nothing half-written
    other_role = run_cli("pki", "issue", str(fed), "--role", "auditor", "--name", "alice",
                         "--out", str(tmp_path / "au"))
    assert other_role.returncode == 0, other_role.stderr  # one name, another role: its own
    rotated = run_cli("pki", "issue", str(fed), "--role", "analyst", "--name", "alice", "--out",
                      str(tmp_path / "a2"), "--rotate")
    assert rotated.returncode == 0 and f"supersedes serial {serial}" in rotated.stdout
    [record] = [json.loads(x) for x in (fed / "rotations.jsonl").read_text().splitlines()]
    assert record["role"] == "analyst" and record["name"] == "alice"
    assert record["supersedes"] == [serial]
    assert run_cli("pki", "revoke", str(fed), "--serial", serial).returncode == 0
    after = run_cli("pki", "issue", str(fed), "--role", "analyst", "--name", "alice", "--out",
                    str(tmp_path / "a3"))
    assert after.returncode == 1  # the rotated one is still valid
