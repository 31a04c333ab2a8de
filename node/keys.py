"""An analyst's Paillier key pair: made once, the public half named in sum jobs.

``veil keys paillier --out DIR`` writes ``DIR/paillier.pub`` (the modulus, shareable: a job
names it) and ``DIR/paillier.key`` (the primes, readable by the owner only; never sent
anywhere). Keys are ``phe`` keys, so any ``phe`` user can check a decryption.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from phe import paillier as phe

from veil.node.errors import AlreadyExists, InvalidInput
from veil.node.jobs._sum import MIN_KEY_BITS, check_modulus, read_public_key

PUBLIC_FILE = "paillier.pub"
PRIVATE_FILE = "paillier.key"


def generate(out_dir: Path, bits: int = MIN_KEY_BITS) -> Path:
    """Make a key pair in ``out_dir`` (created owner-only); return the public key's path."""
    if bits not in (2048, 3072, 4096):
        raise InvalidInput(f"--bits: expected 2048, 3072 or 4096, got {bits}")
    public_path, private_path = out_dir / PUBLIC_FILE, out_dir / PRIVATE_FILE
    for path in (public_path, private_path):
        if path.exists():
            raise AlreadyExists(f"{path} exists; choose another directory (a key is not "
                                "overwritten: jobs that name it could no longer be decrypted)")
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    public, private = phe.generate_paillier_keypair(n_length=bits)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"kind": "paillier-private-key", "n": str(public.n), "p": str(private.p),
                   "q": str(private.q)}, f)
        f.write("\n")
    tmp = public_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"kind": "paillier-public-key", "n": str(public.n)}) + "\n")
    tmp.replace(public_path)
    return public_path


def load_private(key_dir: Path) -> phe.PaillierPrivateKey:
    """The private key in ``key_dir`` (as written by :func:`generate`), checked."""
    path = key_dir / PRIVATE_FILE if key_dir.is_dir() else key_dir
    try:
        doc = json.loads(path.read_text())
        n, p, q = int(doc["n"]), int(doc["p"]), int(doc["q"])
    except FileNotFoundError:
        raise InvalidInput(f"no Paillier private key at {path} (make one with "
                           "`veil keys paillier --out DIR`)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"{path} is not a Paillier private key file: {exc}") from None
    if doc.get("kind") != "paillier-private-key" or p * q != n or p == q:
        raise InvalidInput(f"{path} is not a consistent Paillier private key (n != p·q)")
    check_modulus(n, str(path))
    return phe.PaillierPrivateKey(phe.PaillierPublicKey(n), p, q)


def load_public(path: Path) -> phe.PaillierPublicKey:
    path = path / PUBLIC_FILE if path.is_dir() else path
    return phe.PaillierPublicKey(read_public_key(path))
