"""The `veil` command line: one entry point for data holders, analysts and auditors.

Every command is a thin shell over the library (`veil.node.client`, `.home`, `.catalog`,
`.auditor`); one module per group of commands registers its own verbs. Every error a user
can cause is a VeilError, printed as one line on stderr with exit status 1 (2 for usage
errors, including a group called without a command, which prints its commands).
"""

from __future__ import annotations

import os

# gRPC's C core logs to stderr (`E1204 … add_port.cc`, `Handshake failed`); a CLI user gets
# our one-line errors instead. Read by gRPC when it loads, so set before anything imports it.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import argparse  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence

from veil.node.cli import audit, datasets, jobs, keys, nodes, pki, sums
from veil.node.cli._common import EXIT_ERROR, Commands, save_receipt, usage
from veil.node.errors import VeilError

MODULES = (pki, nodes, datasets, jobs, sums, keys, audit)


def build_parser() -> argparse.ArgumentParser:
    from importlib import metadata

    parser = argparse.ArgumentParser(
        prog="veil",
        description="Veil: a privacy-preserving computation node. Data stays local; "
        "approved jobs get aggregates, never rows; every call is logged.",
    )
    try:
        version = metadata.version("veil")
    except metadata.PackageNotFoundError:  # run from a checkout without installing
        version = "unknown"
    parser.add_argument("--version", action="version", version=f"veil {version}")
    parser.set_defaults(func=lambda _args: usage(parser))
    c = Commands(parser.add_subparsers(dest="command", metavar="COMMAND", title="commands"))
    for module in MODULES:
        module.register(c)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except VeilError as exc:
        # a node's refusal is logged like any answer: say where, so it can be proven later
        receipt = getattr(exc, "receipt", None)
        where = (f" (recorded in {receipt.node}'s log at index {receipt.log_index})"
                 if receipt is not None else "")
        print(f"veil: error: {exc}{where}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("veil: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `veil … | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a file or directory the user named: say which, no traceback
        where = f" {exc.filename}" if exc.filename else ""
        print(f"veil: error: {exc.strerror or exc}:{where}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        save_receipt(args)
