"""The built wheel installs one namespace, ``veil``: ``import veil.node`` works from a fresh
virtual environment outside the checkout, and no top-level ``node``, ``sandbox``,
``protocols`` or ``benchmarks`` lands in site-packages to collide with other projects."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(ROOT)],
        check=True, capture_output=True, text=True,
    )
    (found,) = out.glob("veil-*.whl")
    return found


def test_wheel_holds_only_the_veil_namespace(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"veil"}
    for module in ("veil/node/server.py", "veil/sandbox/_engine.py", "veil/protocols/__init__.py",
                   "veil/v1/jobs_pb2.py", "veil/node/py.typed"):
        assert module in names
    assert not any(n.startswith("veil/benchmarks") for n in names)


@pytest.mark.slow
def test_wheel_imports_in_a_fresh_venv_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
         "--no-index", str(wheel)],
        check=True, capture_output=True, text=True,
    )
    # the dependencies come from this environment's site-packages, as a plain path: its
    # .pth files (the checkout's editable install among them) are not processed
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    probe = (
        "import importlib.util, veil.node.server, veil.sandbox, veil.protocols, veil.v1.jobs_pb2\n"
        "assert 'site-packages' in veil.node.server.__file__, veil.node.server.__file__\n"
        "print([m for m in ('node', 'sandbox', 'protocols', 'benchmarks')"
        " if importlib.util.find_spec(m) is not None])\n"
    )
    result = subprocess.run([str(python), "-c", probe], cwd=tmp_path, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    veil = subprocess.run([str(venv / "bin" / "veil"), "--help"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert veil.returncode == 0 and "usage: veil" in veil.stdout, veil.stderr
