"""`veil keys`: an analyst's own keys (the Paillier pair a sum job encrypts to)."""

from __future__ import annotations

import argparse
from pathlib import Path

from veil.node.cli._common import Commands


def cmd_keys_paillier(args: argparse.Namespace) -> int:
    from veil.node import keys

    public = keys.generate(Path(args.out), args.bits)
    print(f"Paillier key pair ({args.bits} bits) written to {args.out}")
    print(f"  public:  {public}  (name it in a sum job: paillier_key = \"{public}\")")
    print(f"  private: {Path(args.out) / keys.PRIVATE_FILE}  (owner-only; never sent anywhere; "
          "`veil run sum --key` reads it to decrypt the totals)")
    return 0


def register(c: Commands) -> None:
    g = c.group("keys", "an analyst's own keys")
    p = c.command(g, "paillier", cmd_keys_paillier,
                  "make a Paillier key pair for sum jobs (the private key stays here)")
    p.add_argument("--out", required=True, metavar="DIR", help="where to write the key pair")
    p.add_argument("--bits", type=int, default=3072, choices=(2048, 3072, 4096),
                   help="modulus size (default 3072, ~128-bit security)")
