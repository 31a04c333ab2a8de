"""What every command shares: identities, clients, receipts, tables, times, registration."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from veil.node.errors import InvalidInput

EXIT_ERROR = 1
IDENTITY_ENV = "VEIL_IDENTITY"

Handler = Callable[[argparse.Namespace], int]


class Commands:
    """Builds the parser tree: a group prints its commands when called alone."""

    def __init__(self, sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        self.sub = sub

    def group(self, name: str, help_: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        p = self.sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=lambda _args: usage(p))
        return p.add_subparsers(dest="subcommand", metavar="COMMAND", title="commands")

    def command(self, g: argparse._SubParsersAction[argparse.ArgumentParser] | None, name: str,
                fn: Handler, help_: str) -> argparse.ArgumentParser:
        p = (g or self.sub).add_parser(name, help=help_, description=help_)
        p.set_defaults(func=fn)
        return p


def usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def print_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def identity(args: argparse.Namespace) -> Path:
    value = args.identity or os.environ.get(IDENTITY_ENV)
    if not value:
        raise InvalidInput(
            f"no identity: pass --identity DIR (made by `veil pki issue`) or set {IDENTITY_ENV}"
        )
    return Path(value).expanduser()


#: every client a command opened, in order: the last call's receipt is the command's receipt
_CLIENTS: list[Any] = []


def client_for(args: argparse.Namespace, address: str | None = None,
               node: str | None = None):  # type: ignore[no-untyped-def]
    """A client for ``--node`` (or ``address``, checked to be node ``node``), as ``--identity``."""
    from veil.node.client import Client

    client = Client(address or args.node, identity(args), node=node)
    _CLIENTS.append(client)
    return client


def last_receipt() -> Any:
    """The receipt of the last call the command made (an answer or a refusal), if any."""
    for client in reversed(_CLIENTS):
        if client.last_receipt is not None:
            return client.last_receipt
    return None


def save_receipt(args: argparse.Namespace) -> None:
    """``--receipt-out FILE``: write the receipt of the command's last call, refusals too."""
    path = getattr(args, "receipt_out", None)
    receipt = last_receipt()
    if path and receipt is not None:
        Path(path).write_text(json.dumps(receipt.to_json(), indent=2) + "\n")


def add_client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", required=True, metavar="HOST:PORT", help="the node to call")
    p.add_argument(
        "--identity", metavar="DIR", help=f"your identity directory (default: ${IDENTITY_ENV})"
    )
    p.add_argument("--receipt-out", metavar="FILE", help="write the call's log receipt here")


def parse_time(value: str | None, flag: str) -> str | None:
    from veil.node.log import parse_user_time

    return parse_user_time(value, flag) if value else None


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4f}".rstrip("0").rstrip(".")
    return "NULL" if v is None else str(v)


def pairs(specs: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for spec in specs:
        column, sep, value = spec.partition("=")
        if not sep or not column or not value:
            raise InvalidInput(f"{flag} takes COLUMN=VALUE, got {spec!r}")
        out[column] = value
    return out


JOB_ID_HEX = 32


def job_id(client: Any, given: str) -> str:
    """The full id of the job ``given`` names: the id itself, or any unique prefix of one of
    the jobs this caller can see at the node (tables print 12-character prefixes)."""
    from veil.node.errors import NotFound

    given = given.strip().lower()
    if len(given) == JOB_ID_HEX or not given:
        return given
    if len(given) > JOB_ID_HEX or any(c not in "0123456789abcdef" for c in given):
        raise InvalidInput(f"job id: expected {JOB_ID_HEX} hex digits or a prefix of them, "
                           f"got {given[:40]!r}")
    found = sorted(j.id for j in client.jobs() if j.id.startswith(given))
    if not found:
        raise NotFound(f"no job whose id starts with {given!r} at {client.address} "
                       "(among the jobs you can see there)")
    if len(found) > 1:
        raise InvalidInput(f"job id prefix {given!r} is ambiguous at {client.address}: it "
                           f"matches {', '.join(found[:10])}{' …' if len(found) > 10 else ''}; "
                           "give more digits")
    return found[0]


class ProgressLine:
    """One self-rewriting line of progress on a terminal (stderr); silent when piped.

    ``update(fraction)`` shows bytes done of the total and the rate so far; ``finish(rows)``
    ends the line with the time taken and rows per second.
    """

    def __init__(self, label: str, total_bytes: int, stream: Any = None) -> None:
        import time

        self._clock = time.monotonic
        self._start = self._clock()
        self.label, self.total = label, total_bytes
        self.stream = sys.stderr if stream is None else stream
        self.shown = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, fraction: float) -> None:
        if not self.shown:
            return
        elapsed = max(self._clock() - self._start, 1e-9)
        done = fraction * self.total
        self.stream.write(f"\r{self.label}: {_mb(done)} of {_mb(self.total)} "
                          f"({_mb(done / elapsed)}/s)   ")
        self.stream.flush()

    def finish(self, rows: int) -> None:
        if not self.shown:
            return
        elapsed = max(self._clock() - self._start, 1e-9)
        self.stream.write(f"\r{self.label}: {_mb(self.total)} in {elapsed:.1f} s, "
                          f"{rows:,} rows ({rows / elapsed:,.0f} rows/s)   \n")
        self.stream.flush()


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"
