"""`veil dataset add` on a terminal shows its progress (bytes, rate) and ends with rows/s;
piped, it prints only its result, so scripts read the same output as before."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Federation, make_node, run_cli


def _node(federation: Federation, tmp_path: Path) -> Path:
    return make_node(federation, tmp_path, "bank-a").path


def _csv(path: Path, rows: int) -> Path:
    with open(path, "w") as f:
        f.write("customer_id,amount\n")
        f.writelines(f"c{i},{i % 1000}\n" for i in range(rows))
    return path


def _on_a_terminal(*args: str) -> tuple[int, str]:
    """Run `veil ARGS` with stdout and stderr on a pseudo-terminal; return (exit, output)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "veil.node.cli", *args],
                            stdout=follower, stderr=follower, stdin=subprocess.DEVNULL)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    return proc.wait(timeout=120), out.decode(errors="replace")


@pytest.mark.slow
def test_dataset_add_on_a_terminal_shows_bytes_and_rows_per_second(
    federation: Federation, tmp_path: Path
) -> None:
    node = _node(federation, tmp_path)
    source = _csv(tmp_path / "customers.csv", 1_500_000)
    code, out = _on_a_terminal("dataset", "add", str(node), "customers", str(source),
                               "--key", "customer_id")
    assert code == 0, out
    size_mb = f"{source.stat().st_size / 1e6:,.1f} MB"
    assert re.search(rf"importing customers\.csv: {re.escape(size_mb)} in [\d.]+ s, "
                     r"1,500,000 rows \([\d,]+ rows/s\)", out), out
    assert "registered customers version 1" in out


def test_dataset_add_piped_prints_no_progress(federation: Federation, tmp_path: Path) -> None:
    node = _node(federation, tmp_path)
    source = _csv(tmp_path / "customers.csv", 50)
    done = run_cli("dataset", "add", str(node), "customers", str(source), "--key", "customer_id")
    assert done.returncode == 0, done.stderr
    assert "importing" not in done.stderr and "rows/s" not in done.stderr + done.stdout
    assert done.stdout.startswith("registered customers version 1: 50 rows")
