"""The built wheel installs one namespace, ``veil``: ``import veil.node`` works from a fresh
virtual environment outside the checkout, and no top-level ``node``, ``sandbox``,
``protocols`` or ``benchmarks`` lands in site-packages to collide with other projects."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # built from a copy of the tracked files, as CI's clean clone has them: a build in the
    # checkout reuses its build/ directory, whose stale modules once hid a missing package
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                             capture_output=True).stdout.decode().split("\0")
    source = tmp_path_factory.mktemp("clean-clone")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(source)],
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


def test_wheel_holds_every_package_of_the_source_tree(wheel: Path) -> None:
    """pyproject.toml lists the packages by hand (the folders map onto ``veil.*``); a new
    folder left off that list would install a node without it."""
    roots = {"node": "veil/node", "sandbox": "veil/sandbox", "protocols": "veil/protocols",
             "proto/veil": "veil"}
    expected = {
        str(Path(installed) / init.relative_to(ROOT / folder))
        for folder, installed in roots.items()
        for init in (ROOT / folder).rglob("__init__.py")
    }
    names = set(zipfile.ZipFile(wheel).namelist())
    assert sorted(expected - names) == []


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
