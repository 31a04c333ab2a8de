"""The README's commands work: the walkthrough blocks run as written, in order."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def walkthrough_script() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("<!-- walkthrough:start -->")[1].split("<!-- walkthrough:end -->")[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    assert len(blocks) >= 4, "the walkthrough lost its shell blocks"
    return "\n".join(blocks)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_readme_starts_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```sh\n(.*?)```", text, flags=re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["make demo", "make test"]


@pytest.mark.slow
def test_walkthrough_runs_as_written(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    script = walkthrough_script()
    for port in (7400, 7401, 7402):  # the walkthrough's three nodes
        script = script.replace(f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=300,
    )
    out = result.stdout + result.stderr
    # stop the node even if a step failed
    for bank in ("bank-a", "bank-b", "bank-c"):
        subprocess.run([sys.executable, "-m", "veil.node.cli", "node", "stop",
                        str(tmp_path / "walkthrough" / bank)], capture_output=True)
    assert result.returncode == 0, out
    assert "valid receipt: node 'bank-a' registered customers version 1" in out
    assert "suppressed" in out
    assert "log verified" in out
    assert "inclusion proof and checkpoint signature verified" in out
    assert "statement reconciles" in out
    assert "0 mismatched" in out
    totals = json.loads((tmp_path / "walkthrough" / "totals.json").read_text())
    assert totals["groups"] == ["north", "south", "east", "west", "islands"]
    assert [x["node"] for x in totals["receipts"]] == ["bank-a", "bank-b", "bank-c"]
    assert totals["withheld"][-1] == 3  # islands: too few customers at every bank
    assert "2 compute calls replayed, 0 mismatched" in out  # bank-b's two parts of the sum
