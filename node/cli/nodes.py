"""`veil` commands for running a node: init, serve, stop."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from veil.node.cli._common import EXIT_ERROR, Commands
from veil.node.errors import InvalidInput


def cmd_node_init(args: argparse.Namespace) -> int:
    from veil.node.home import init_node

    home = init_node(
        Path(args.node_dir),
        args.name,
        identity_dir=Path(args.identity) if args.identity else None,
        federation_dir=Path(args.federation) if args.federation else None,
        listen=args.listen,
        hosts=tuple(args.host),
    )
    print(f"node {args.name!r} initialized in {home.path}")
    print(f"  edit {home.config_path} for policy and tariff, then `veil node serve {home.path}`")
    return 0


def cmd_node_serve(args: argparse.Namespace) -> int:
    from veil.node.server import serve

    if args.detach:
        return _serve_detached(Path(args.node_dir), args.listen)
    serve(Path(args.node_dir), args.listen)
    return 0


def _serve_detached(node_dir: Path, listen: str | None) -> int:
    """Start `veil node serve` in the background; return once it listens (or failed)."""
    import subprocess
    import time

    from veil.node.home import NodeHome

    home = NodeHome(node_dir)
    home.check()
    pid_file, log_file = node_dir / "serve.pid", node_dir / "serve.log"
    if pid_file.exists() and _alive(int(pid_file.read_text())):
        raise InvalidInput(f"node in {node_dir} already runs as pid {pid_file.read_text().strip()}")
    cmd = [sys.executable, "-m", "veil.node.cli", "node", "serve", str(node_dir)]
    if listen:
        cmd += ["--listen", listen]
    with log_file.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log_file.read_text()
        if "listening on" in text:
            pid_file.write_text(f"{proc.pid}\n")
            print(text.strip().splitlines()[0])
            print(f"  pid {proc.pid}; output in {log_file}; stop with `veil node stop {node_dir}`")
            return 0
        if proc.poll() is not None:
            print(text.strip(), file=sys.stderr)
            return EXIT_ERROR
        time.sleep(0.05)
    proc.terminate()
    raise InvalidInput(f"node did not start listening within 30 s; see {log_file}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def cmd_node_stop(args: argparse.Namespace) -> int:
    import signal
    import time

    pid_file = Path(args.node_dir) / "serve.pid"
    if not pid_file.exists():
        raise InvalidInput(f"no detached node runs from {args.node_dir} (no serve.pid)")
    pid = int(pid_file.read_text())
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    pid_file.unlink()
    print(f"node in {args.node_dir} stopped")
    return 0



def register(c: Commands) -> None:
    g = c.group("node", "run a node: init, serve, stop")
    p = c.command(g, "init", cmd_node_init, "create a node directory")
    p.add_argument("node_dir", metavar="NODEDIR")
    p.add_argument("--name", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--identity", metavar="DIR", help="a node identity from `veil pki issue`")
    src.add_argument("--federation", metavar="DIR", help="issue the node identity from this CA")
    p.add_argument("--listen", default="127.0.0.1:7400", metavar="HOST:PORT")
    p.add_argument("--host", action="append", default=[], help="extra DNS name or IP")
    p = c.command(g, "serve", cmd_node_serve, "serve the node over gRPC with mTLS")
    p.add_argument("node_dir", metavar="NODEDIR")
    p.add_argument("--listen", metavar="HOST:PORT", help="override node.toml (port 0: any free)")
    p.add_argument("--detach", action="store_true",
                   help="run in the background; return once listening (stop: `veil node stop`)")
    p = c.command(g, "stop", cmd_node_stop, "stop a node started with --detach (SIGTERM)")
    p.add_argument("node_dir", metavar="NODEDIR")
