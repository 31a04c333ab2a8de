"""Run mypy over the installed namespace as it is laid out in the checkout.

The folders stay where they are (``node/``, ``sandbox/``, ``protocols/``, ``proto/veil``) and
install as ``veil.node``, ``veil.sandbox``, ``veil.protocols`` beside ``veil.v1``. mypy maps
files to modules by directory, and does not follow setuptools' editable import hook, so this
script lays a tree of symbolic links in the shape of the installed namespace and checks that.
Usage: ``python scripts/typecheck.py`` (tests/test_lint.py runs it; the options are in
pyproject.toml).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINKS = {
    "veil/__init__.py": "proto/veil/__init__.py",
    "veil/py.typed": "proto/veil/v1/py.typed",
    "veil/v1": "proto/veil/v1",
    "veil/node": "node",
    "veil/sandbox": "sandbox",
    "veil/protocols": "protocols",
    "benchmarks": "benchmarks",
}
PACKAGES = ("veil.node", "veil.sandbox", "veil.protocols", "benchmarks")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="veil-typecheck-") as tree:
        for link, target in LINKS.items():
            path = Path(tree, link)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(ROOT / target, path)
        args = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                "--no-error-summary"]
        for p in PACKAGES:
            args += ["-p", p]
        env = {**os.environ, "MYPYPATH": tree}
        return subprocess.run(args, cwd=tree, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
