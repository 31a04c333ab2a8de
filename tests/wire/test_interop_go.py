"""Veil's certificates and mTLS as a parser that is not Python's sees them: Go's crypto/x509 and
crypto/tls (tests/interop/handshake.go, stdlib only, built offline in a temp dir)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from veil.node.home import NodeHome
from veil.node.server import RunningNode

from conftest import Federation

HANDSHAKE_GO = Path(__file__).resolve().parents[1] / "interop" / "handshake.go"


def _go() -> str:
    go = shutil.which("go") or ("/usr/bin/go" if Path("/usr/bin/go").exists() else None)
    if go is None:
        if os.environ.get("CI") == "true":
            pytest.fail("go is not installed; .ci/run installs golang-go, the interop test needs it")
        pytest.skip("go is not installed (set CI=true to make this a failure)")
    return go


@pytest.mark.slow
def test_go_parses_verifies_and_handshakes_with_veil_certificates(
    federation: Federation, node_home: NodeHome, running: RunningNode, tmp_path: Path
) -> None:
    go = _go()
    build = tmp_path / "build"
    build.mkdir()
    shutil.copy(HANDSHAKE_GO, build / "handshake.go")
    (build / "go.mod").write_text("module veil/interop\n\ngo 1.19\n")
    env = {
        **os.environ,
        "GOTOOLCHAIN": "local",
        "GOPROXY": "off",
        "GOFLAGS": "-mod=mod",
        "GOCACHE": str(tmp_path / "gocache"),
        "GOPATH": str(tmp_path / "gopath"),
        "CGO_ENABLED": "0",
    }
    subprocess.run([go, "build", "-o", "handshake", "."], cwd=build, env=env, check=True,
                   capture_output=True, timeout=300)
    analyst = federation.identity("analyst", "go-interop")
    ident = node_home.identity_dir
    out = subprocess.run(
        [str(build / "handshake"), str(ident / "ca.crt"), str(ident / "tls.crt"),
         str(analyst / "tls.crt"), str(analyst / "tls.key"), running.address, "127.0.0.1"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    assert "handshake ok" in out.stdout and "CN=bank-a" in out.stdout
    assert "CN=go-interop" in out.stdout
