"""Generate the veil.v1 Python stubs: *_pb2.py, *_pb2_grpc.py and *.pyi beside the .proto files.

Usage: python scripts/gen_protos.py [--check]

Configuration lives in pyproject.toml under [tool.veil.protos]. With --check, the stubs
are generated into a temporary directory and compared byte for byte with the committed
ones; the exit status is 1 (and the differing files are named) when they are stale.
The generator is grpcio-tools, pinned in pyproject.toml, so the output is reproducible.
"""

from __future__ import annotations

import filecmp
import glob
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")


def _config() -> tuple[Path, list[Path]]:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["veil"]["protos"]
    sources = sorted(Path(p) for p in glob.glob(str(ROOT / conf["sources"])))
    if not sources:
        raise SystemExit(f"no .proto files match {conf['sources']}")
    return ROOT / conf["proto_root"], sources


def generate(out_dir: Path) -> list[Path]:
    """Run protoc once for all sources into out_dir; return the generated paths."""
    proto_root, sources = _config()
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(s.relative_to(proto_root)) for s in sources),
    ]
    # protoc resolves relative source paths against the -I roots; run from proto_root.
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit status {code}")
    return sorted(p for p in out_dir.rglob("*") if p.name.endswith(GENERATED))


def main(argv: list[str]) -> int:
    proto_root, _ = _config()
    check = "--check" in argv
    with tempfile.TemporaryDirectory() as tmp:
        produced = generate(Path(tmp))
        stale = []
        for path in produced:
            rel = path.relative_to(tmp)
            target = proto_root / rel
            if check:
                if not target.exists() or not filecmp.cmp(path, target, shallow=False):
                    stale.append(str(rel))
            else:
                shutil.copyfile(path, target)
        if check:
            committed = {
                str(p.relative_to(proto_root))
                for p in proto_root.rglob("*")
                if p.name.endswith(GENERATED)
            }
            stale += sorted(committed - {str(p.relative_to(tmp)) for p in produced})
            if stale:
                print("stale generated protobuf code (run `python scripts/gen_protos.py`):")
                for name in stale:
                    print(f"  proto/{name}")
                return 1
            print(f"{len(produced)} generated files are fresh")
        else:
            print(f"wrote {len(produced)} files under {proto_root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
