"""Paillier: Veil's encryptions/s vs phe's encrypt on the same key, one and all cores; CRT decrypt.

``python -m benchmarks paillier [--bits 2048,3072] [--count N] [--phe-sample N] [--window W]``

For each key size, on one freshly generated ``phe`` key pair (cached under
``/tmp/veil-bench``; key generation is not timed):

(a) ``phe``'s stock ``public_key.encrypt(value)`` (random r < n, r^n mod n^2 with a k-bit
    exponent), timed on a sample of ``--phe-sample`` encryptions (default 50) and reported
    per second: on one core, and on all cores with one process per core each encrypting
    the sample (what a user would do with multiprocessing).
(b) ``veil.protocols.paillier.Encryptor.encrypt`` on one core, fresh randomness for every
    ciphertext (h_s^a, a of k/2 bits, fixed-base window table): the >= 10x target. The
    table build is timed separately, and so is h_s^a alone, to show where the time goes.
(c) The same with a ``RandomnessPool`` filled beforehand (fill time reported): the cost
    left on the critical path when randomness is precomputed.
(d) ``ParallelEncryptor.encrypt_many`` on all cores (worker start-up and tables timed
    separately, outside the rate).
(e) Decryption: ``phe``'s ``private_key.decrypt`` and ``raw_decrypt`` vs ``Decryptor``
    (CRT with precomputed gmpy2 values) on the same ciphertexts.

Every Veil ciphertext timed here is also checked with phe's ``raw_decrypt`` on a sample.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from phe import paillier as phe

from benchmarks._table import header, table, timed, verdict
from veil.protocols.paillier import (
    DEFAULT_WINDOW,
    Decryptor,
    Encryptor,
    ParallelEncryptor,
)

BENCH_DIR = Path("/tmp/veil-bench")


def keypair(bits: int) -> tuple[phe.PaillierPublicKey, phe.PaillierPrivateKey]:
    """A phe key pair of ``bits`` bits, generated once and cached (p, q) in BENCH_DIR."""
    path = BENCH_DIR / f"paillier-{bits}.json"
    if path.exists():
        pq = json.loads(path.read_text())
        p, q = int(pq["p"], 16), int(pq["q"], 16)
        pk = phe.PaillierPublicKey(p * q)
        return pk, phe.PaillierPrivateKey(pk, p, q)
    pk, sk = phe.generate_paillier_keypair(n_length=bits)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"p": hex(sk.p), "q": hex(sk.q)}))
    return pk, sk


def _phe_encrypt_sample(n: int, values: list[int]) -> float:
    """In a worker process: seconds for phe's stock encrypt of each value."""
    pk = phe.PaillierPublicKey(n)
    start = time.perf_counter()
    for v in values:
        pk.encrypt(v)
    return time.perf_counter() - start


def phe_all_cores(pk: phe.PaillierPublicKey, values: list[int], workers: int) -> float:
    """Encryptions/s of phe with one process per core, each encrypting ``values``."""
    import multiprocessing

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_phe_encrypt_sample, [pk.n] * workers, [[1]] * workers))  # start them
        start = time.perf_counter()
        list(pool.map(_phe_encrypt_sample, [pk.n] * workers, [values] * workers))
        elapsed = time.perf_counter() - start
    return workers * len(values) / elapsed


def bench_key(bits: int, count: int, phe_sample: int, window: int, workers: int
              ) -> dict[str, float]:
    pk, sk = keypair(bits)
    rng = random.Random(bits)
    values = [rng.randrange(2**62) for _ in range(count)]
    sample = values[:phe_sample]

    _, phe_s = timed(lambda: [pk.encrypt(v) for v in sample])
    phe_rate = len(sample) / phe_s
    phe_multi = phe_all_cores(pk, sample, workers) if workers > 1 else phe_rate

    enc, setup_s = timed(lambda: Encryptor(pk, window=window))
    _, obf_s = timed(lambda: [enc.fresh_obfuscator() for _ in range(count)])
    cs, veil_s = timed(lambda: [enc.encrypt(v) for v in values])
    veil_rate = count / veil_s
    for i in range(0, count, max(1, count // 20)):
        assert sk.raw_decrypt(cs[i]) == values[i], "phe cannot decrypt a Veil ciphertext"

    pooled = Encryptor(pk, window=window, pool_capacity=count)
    assert pooled.pool is not None
    _, fill_s = timed(pooled.pool.fill)
    pcs, pooled_s = timed(lambda: [pooled.encrypt(v) for v in values])
    assert pooled.pool.misses == 0
    assert sk.raw_decrypt(pcs[-1]) == values[-1]

    many = values * workers
    pe, start_s = timed(lambda: ParallelEncryptor(pk, workers=workers, window=window))
    try:
        mcs, many_s = timed(lambda: pe.encrypt_many(many))
    finally:
        pe.close()
    assert sk.raw_decrypt(mcs[-1]) == many[-1]
    many_rate = len(many) / many_s

    dec_cs = cs[: max(50, min(count, 400))]
    wrapped = [phe.EncryptedNumber(pk, c, 0) for c in dec_cs]
    _, phe_dec_s = timed(lambda: [sk.decrypt(w) for w in wrapped])
    _, phe_raw_s = timed(lambda: [sk.raw_decrypt(c) for c in dec_cs])
    d = Decryptor(sk)
    plain, veil_dec_s = timed(lambda: [d.decrypt(c) for c in dec_cs])
    assert plain == values[: len(dec_cs)]
    nd = len(dec_cs)

    table(
        [f"{bits}-bit key, window {window}, {workers} cores", "count", "seconds", "per second",
         "vs phe encrypt (x)"],
        [
            [f"phe public_key.encrypt, 1 core (sample of {len(sample)})", len(sample), phe_s,
             phe_rate, 1.0],
            [f"phe public_key.encrypt, {workers} processes (sample of {len(sample)} each)",
             workers * len(sample), workers * len(sample) / phe_multi, phe_multi,
             phe_multi / phe_rate],
            ["veil Encryptor.encrypt, 1 core, fresh h_s^a each", count, veil_s, veil_rate,
             veil_rate / phe_rate],
            ["  of which h_s^a alone (fixed-base table)", count, obf_s, count / obf_s,
             (count / obf_s) / phe_rate],
            ["veil encrypt, 1 core, randomness pool filled beforehand", count, pooled_s,
             count / pooled_s, (count / pooled_s) / phe_rate],
            [f"veil ParallelEncryptor.encrypt_many, {workers} cores", len(many), many_s,
             many_rate, many_rate / phe_rate],
        ],
    )
    print(f"set-up outside the rates: Encryptor tables {setup_s:.3f} s; pool fill of {count:,} "
          f"{fill_s:.3f} s; ParallelEncryptor start ({workers} spawned workers building their "
          f"tables) {start_s:.3f} s; all-cores Veil vs all-cores phe: "
          f"{many_rate / phe_multi:.1f}x\n")
    table(
        [f"{bits}-bit decryption (key owner)", "count", "seconds", "per second",
         "vs phe decrypt (x)"],
        [
            ["phe private_key.decrypt (EncryptedNumber)", nd, phe_dec_s, nd / phe_dec_s, 1.0],
            ["phe private_key.raw_decrypt (CRT, int)", nd, phe_raw_s, nd / phe_raw_s,
             phe_dec_s / phe_raw_s],
            ["veil Decryptor.decrypt (CRT, gmpy2 precomputed)", nd, veil_dec_s,
             nd / veil_dec_s, phe_dec_s / veil_dec_s],
        ],
    )
    return {
        "encrypt_1core": veil_rate / phe_rate,
        "encrypt_pool": (count / pooled_s) / phe_rate,
        "encrypt_all": many_rate / phe_rate,
        "encrypt_all_vs_phe_all": many_rate / phe_multi,
        "decrypt": phe_dec_s / veil_dec_s,
        "decrypt_vs_raw": phe_raw_s / veil_dec_s,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks paillier")
    parser.add_argument("--bits", default="2048,3072", help="comma-separated key sizes")
    parser.add_argument("--count", type=int, default=1500,
                        help="Veil encryptions per measurement (per core for all cores)")
    parser.add_argument("--phe-sample", type=int, default=50,
                        help="phe encryptions timed (its rate is scaled from this sample)")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                        help="fixed-base window bits")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes for the all-cores rows (default: all cores)")
    args = parser.parse_args(argv)
    try:
        sizes = [int(b) for b in args.bits.split(",")]
    except ValueError:
        parser.error("--bits must be comma-separated integers, e.g. 2048,3072")
    if args.count < 50 or args.phe_sample < 5 or args.workers < 1:
        parser.error("--count must be >= 50, --phe-sample >= 5, --workers >= 1")
    header(f"paillier: Veil (DJN fixed base, k/2-bit exponent) vs phe encrypt on the same "
           f"keys {', '.join(map(str, sizes))}; phe timed on a sample of {args.phe_sample} "
           f"and reported per second")
    results = {bits: bench_key(bits, args.count, args.phe_sample, args.window, args.workers)
               for bits in sizes}
    for bits, r in results.items():
        print(f"{bits}-bit ratios: encrypt 1 core {r['encrypt_1core']:.1f}x, with pool "
              f"{r['encrypt_pool']:.0f}x, {args.workers} cores {r['encrypt_all']:.1f}x "
              f"(vs phe on {args.workers} cores {r['encrypt_all_vs_phe_all']:.1f}x); "
              f"decrypt {r['decrypt']:.2f}x phe decrypt, {r['decrypt_vs_raw']:.2f}x raw_decrypt")
    for bits, r in results.items():
        verdict(f"{bits}-bit encrypt, 1 core, vs phe encrypt (x)", r["encrypt_1core"], 10.0,
                higher_is_better=True)
    return 0
