"""Run one named benchmark: ``python -m benchmarks NAME [ARGS...]``.

Each benchmark lives in ``benchmarks/NAME.py`` and defines ``main(argv: list[str]) -> int``.
It runs Veil and the tool a user would otherwise pick side by side in one run and
prints a table with ratios (see ``benchmarks/_table.py``).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import benchmarks


def available() -> list[str]:
    return sorted(
        m.name for m in pkgutil.iter_modules(benchmarks.__path__) if not m.name.startswith("_")
    )


def main(argv: list[str]) -> int:
    names = available()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m benchmarks NAME [ARGS...]\n\nbenchmarks:")
        for name in names:
            doc = (importlib.import_module(f"benchmarks.{name}").__doc__ or "").strip()
            print(f"  {name:<20} {doc.splitlines()[0] if doc else ''}")
        return 0 if argv else 2
    name = argv[0]
    if name not in names:
        print(f"unknown benchmark {name!r}; available: {', '.join(names)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"benchmarks.{name}")
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
