"""The ``sum`` kind: totals across the job's nodes; no node's part revealed to anyone.

One run, as the job's aggregator drives it (``SumService.RunSum``, called by the analyst):

1. **Mask keys.** The aggregator draws a run id and asks every node of the job, itself
   included, for a fresh X25519 key for this run (``PeerService.PrepareSum``). Each node signs
   its key, bound to the job, the run and its name, with its Ed25519 signing key (the one in
   its certificate), so the aggregator cannot substitute a key of its own choosing.
2. **Parts.** The aggregator sends every node all the keys (``PeerService.ContributeSum``).
   Each node checks every key's certificate and signature, computes its local aggregate
   through its own sandbox under its own policy (the same rules as a query: classification,
   negative lists, minimum group size), drops the rows of any category the job does not
   declare (they count nowhere, not even as withheld), refuses (``PolicyDenied``, naming the
   column) a local sum beyond the job's bound before anything is encrypted, encodes it in
   fixed point, packs it into Paillier plaintexts, adds its pairwise masks
   (``veil.protocols.masks``) and encrypts under the analyst's key from the job.
3. **Total.** The aggregator multiplies the parts (adding the plaintexts), re-randomizes the
   result and returns it with every node's receipt. The masks cancel only in the total.

A run that fails at any node (refused, unreachable, a malformed part) releases nothing: the
analyst's error names every failing node, and the aggregator's entry records the step
(``prepare``, ``contribute``, ``add``), the failed nodes and those that had sent a part.

What each party learns (semi-honest nodes, as in DESIGN.md's threat model):

- **The analyst** learns, per declared category and column, the total over the nodes that
  contributed it, the total row count, and how many nodes withheld the category (below their
  minimum group size, or without rows), never which. A single node's part, even decrypted,
  is uniform noise: it carries that node's masks, which cancel only against every other node's.
- **The aggregator** sees ciphertexts under a key it does not hold, and their sizes (fixed
  by the job). It learns that every node took part, or which one failed.
- **A contributing node** sees the other nodes' signed mask keys, and nothing of their data.
- **Collusion.** The analyst together with all but one node can subtract the colluders'
  parts from the total and learn the remaining node's part: with two nodes, either node and
  the analyst learn the other's. The aggregator alone, or with the analyst, learns nothing
  more than the analyst, unless it also colludes with the other nodes. Across runs, the
  totals of two jobs that differ in one node's participation differ by that node's part:
  approvers see the job's nodes, and quotas bound the runs.

The log at every node holds, for its part: the dataset version read, a salted commitment to
its local plaintext aggregate (the salt stays in the node's state, so the log reveals
nothing), and the digest of the ciphertexts it sent. ``veil audit replay`` on that node
recomputes the aggregate from the pinned snapshot and checks the commitment.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import hmac
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric import x25519
from phe.paillier import PaillierPublicKey
from veil.v1 import common_pb2, peer_pb2_grpc, sum_pb2

from veil import sandbox
from veil.node import catalog, dp, federation, queries
from veil.node._rpc import Call, Outcome
from veil.node.catalog import DatasetVersion
from veil.node.config import NodeConfig
from veil.node.context import NodeContext
from veil.node.errors import (
    FailedPrecondition,
    InvalidInput,
    PolicyDenied,
    VeilError,
    VerificationError,
)
from veil.node.grants import Grant
from veil.node.home import NodeHome
from veil.node.jobs import JobSpec, Meters, SumParams, spec_from_canonical, sum_params
from veil.node.jobs._sum import packings
from veil.node.kinds import Replayed, peer_receipt
from veil.protocols import dp as mech
from veil.protocols import masks, paillier, signing
from veil.protocols.canonical import canonical_json
from veil.protocols.errors import ProtocolInputError

#: a prepared run waits this long for its ContributeSum, then its key is forgotten
PENDING_TTL_S = 120.0
MAX_PENDING = 256
#: how long the aggregator waits for a peer's answer
PEER_TIMEOUT_S = 120.0
COMMIT_DOMAIN = b"veil-sum-commitment-v1\n"


class SumKind:
    name = "sum"
    method = "/veil.v1.SumService/RunSum"
    #: a contributor's part is logged under this method; ``veil audit replay`` replays it too
    peer_methods = ("/veil.v1.PeerService/ContributeSum",)

    def __init__(self) -> None:
        self._pending: OrderedDict[tuple[str, str, str], tuple[x25519.X25519PrivateKey, float]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()
        self._encryptors: OrderedDict[int, paillier.Encryptor] = OrderedDict()

    # ------------------------------------------------------------------ submission

    def validate(self, spec: JobSpec, dataset: DatasetVersion, config: NodeConfig,
                 snapshots: Path) -> None:
        """Approvers only ever see a sum whose local query this node's sandbox accepts."""
        q = _local_query(spec, config.name, dataset, snapshots, config)
        p = sum_params(spec.params)
        if spec.dp is not None:
            queries.validate_dp(q, _limits(config, p), _dp_spec(spec, p))
        else:
            queries.validate(q, _limits(config, p))

    def dp_estimate(self, ctx: NodeContext, view: Any) -> list[str]:
        """The dry run's differential-privacy lines: this node's share of the noise."""
        spec, config = view.spec, ctx.home.config
        p = sum_params(spec.params)
        q = _local_query(spec, ctx.name, view.dataset, ctx.home.snapshots, config)
        dq = queries.validate_dp(q, _limits(config, p), _dp_spec(spec, p))
        lines = dp.dry_run(ctx, spec, view.dataset.name, dq.measurements, nodes=len(spec.nodes))
        return lines

    # ------------------------------------------------------------------ the aggregator

    def run(self, ctx: NodeContext, request: Any, call: Call, grant: Grant) -> Outcome:
        """One run, at the aggregator: gather every node's part, add, re-randomize."""
        spec, p = grant.spec, sum_params(grant.spec.params)
        if p.aggregator != ctx.name:
            raise FailedPrecondition(
                f"this node is not the aggregator of job {grant.id}; send RunSum to "
                f"{p.aggregator!r} at {spec.part(p.aggregator).address}"  # type: ignore[union-attr]
            )
        run_id = secrets.token_hex(16)
        call.details = {"sum": {"run": run_id}}
        peers = [n for n in spec.nodes if n.name != ctx.name]
        with concurrent.futures.ThreadPoolExecutor(max(1, len(peers))) as pool:
            futures = {n.name: pool.submit(_peer_call, ctx, n.name, n.address, "PrepareSum",
                                           sum_pb2.PrepareSumRequest(job_id=grant.id,
                                                                     run_id=run_id))
                       for n in peers}
            own = self.prepare_key(ctx, grant.id, run_id)
            keys = {ctx.name: own}
            keys.update({name: answer[0] for name, answer in
                         _gather(futures, call, run_id, "prepare").items()})
            ordered = [keys[n.name] for n in spec.nodes]
            contribute = sum_pb2.ContributeSumRequest(job_id=grant.id, run_id=run_id,
                                                      mask_keys=ordered)
            parts = {n.name: pool.submit(_peer_call, ctx, n.name, n.address, "ContributeSum",
                                         contribute) for n in peers}
            try:
                mine = self.contribute_part(ctx, grant, run_id, ordered)
            except VeilError:
                concurrent.futures.wait(parts.values())
                sent = [name for name, f in parts.items() if f.exception() is None]
                call.details = {"sum": {"run": run_id, "step": "contribute",
                                        "failed": [ctx.name], "contributed": sent}}
                raise
            answers = _gather(parts, call, run_id, "contribute")
        key = PaillierPublicKey(p.paillier_n)
        enc = self._encryptor(key)
        columns: list[list[list[int]]] = [[v] for v in mine.vectors]  # per vector, per node
        receipts = []
        for n in peers:
            part, receipt = answers[n.name]
            try:
                if part.node != n.name:
                    raise VerificationError(f"node {n.name!r} answered for {part.node[:64]!r}")
                for column, blobs in zip(columns, (part.sums, part.counts, part.withheld)):
                    column.append(_ciphertexts(key, blobs, len(column[0]), n.name))
            except VeilError:
                call.details = {"sum": {"run": run_id, "step": "add", "failed": [n.name],
                                        "contributed": list(answers)}}
                raise
            receipts.append(common_pb2.NodeReceipt(node=n.name, receipt=receipt))
        sums, counts, withheld = (
            [paillier.ciphertext_to_bytes(key, enc.rerandomize(c)) for c in enc.add_vectors(v)]
            for v in columns
        )
        total = len(sums) + len(counts) + len(withheld)
        response = sum_pb2.SumResult(run_id=run_id, sums=sums, counts=counts, withheld=withheld,
                                     receipts=receipts)
        meters = mine.meters + Meters(ciphertexts=total,
                                      bytes_out=paillier.ciphertext_size(key) * total)
        response.meters.CopyFrom(_meters_proto(meters))
        call.details = {"sum": {**mine.details, "nodes": [n.name for n in spec.nodes]}}
        return Outcome(response=response, meters=meters, datasets=(grant.dataset.ref,),
                       digest=_digest(sums, counts, withheld), effect=mine.effect)

    # ------------------------------------------------------------------ every node

    def prepare_key(self, ctx: NodeContext, job: str, run_id: str) -> sum_pb2.MaskKey:
        """A fresh X25519 key for (job, run), kept until its ContributeSum, signed."""
        if len(run_id) != 32 or any(c not in "0123456789abcdef" for c in run_id):
            raise InvalidInput(f"run_id: expected 32 lowercase hex digits, got {run_id[:40]!r}")
        private = x25519.X25519PrivateKey.generate()
        now = time.monotonic()
        with self._lock:
            for k in [k for k, (_, t) in self._pending.items() if t < now]:
                del self._pending[k]
            if (ctx.name, job, run_id) in self._pending:
                raise FailedPrecondition(f"run {run_id} of job {job} was already prepared here")
            if len(self._pending) >= MAX_PENDING:
                raise FailedPrecondition("too many sum runs are being prepared at this node; "
                                         "try again in a minute")
            self._pending[(ctx.name, job, run_id)] = (private, now + PENDING_TTL_S)
        statement = masks.statement(job, run_id, ctx.name, private.public_key())
        return sum_pb2.MaskKey(node=ctx.name, statement=statement,
                               signature=signing.sign(ctx.home.identity, signing.MASK_KEY,
                                                      statement),
                               certificate_pem=ctx.cert_pem)

    def contribute_part(self, ctx: NodeContext, grant: Grant, run_id: str,
                        mask_keys: Sequence[sum_pb2.MaskKey]) -> _Part:
        """This node's masked, encrypted part of run ``run_id`` (consumes its prepared key)."""
        spec, p = grant.spec, sum_params(grant.spec.params)
        with self._lock:
            pending = self._pending.pop((ctx.name, grant.id, run_id), None)
        if pending is None or pending[1] < time.monotonic():
            raise FailedPrecondition(
                f"run {run_id} of job {grant.id} was not prepared at this node, expired or "
                "was already contributed; the aggregator must start a new run"
            )
        private = pending[0]
        publics = _open_mask_keys(ctx, spec, grant.id, run_id, mask_keys)
        if publics[ctx.name] != masks.raw_public(private.public_key()):
            raise VerificationError(
                f"the mask key given for this node ({ctx.name}) is not the one it made for "
                f"run {run_id}: the aggregator substituted it"
            )
        config = ctx.home.config
        q = _local_query(spec, ctx.name, grant.dataset, ctx.home.snapshots, config)
        noised: _Noised | None = None
        if spec.dp is not None:
            noised = _noised_local(ctx, grant, q, p)
            local, sandbox_meters = noised.local, noised.meters
        else:
            result = queries.run(q, _limits(config, p), ctx.workers)
            local, sandbox_meters = _aggregate(result, p, ctx.name), result.meters
        key = PaillierPublicKey(p.paillier_n)
        sums_pack, counts_pack, flags_pack = packings(p, len(spec.nodes), spec.dp is not None)
        vectors = [sums_pack.pack(local.sum_slots()), counts_pack.pack(local.count_slots()),
                   flags_pack.pack(local.flag_slots())]
        plain = [m for v in vectors for m in v]
        try:
            pads = masks.masks(grant.id, run_id, [n.name for n in spec.nodes], ctx.name,
                               private, publics, key.n, len(plain))
        except masks.InvalidMaskKey as exc:
            raise VerificationError(str(exc)) from None
        enc = self._encryptor(key)
        cts = enc.encrypt_all([(m + r) % key.n for m, r in zip(plain, pads)])
        salt = secrets.token_bytes(32)
        commitment = _commit(local.encode(), salt)
        a, b = len(vectors[0]), len(vectors[0]) + len(vectors[1])
        parts = (cts[:a], cts[a:b], cts[b:])
        size = paillier.ciphertext_size(key)
        m = sandbox_meters
        meters = Meters(runs=1, rows_scanned=m.rows_scanned, cpu_ms=m.cpu_ms,
                        ciphertexts=len(cts), bytes_out=size * len(cts))
        details = {"run": run_id, "commitment": commitment,
                   "parts_sha256": _digest_ints(key, cts), "query": q.settings()}
        if noised is not None:
            details["dp"] = noised.details

        def effect(tx: sqlite3.Connection, index: int) -> None:
            tx.execute("INSERT INTO sum_parts(log_index, job_id, run_id, salt) VALUES (?, ?, ?, ?)",
                       (index, grant.id, run_id, salt))
            if noised is not None:
                noised.charge(tx, index)

        return _Part(parts, meters, details, effect)

    def contribute(self, ctx: NodeContext, request: Any, call: Call, grant: Grant) -> Outcome:
        """``PeerService.ContributeSum``: the aggregator asks for this node's part."""
        call.details = {"sum": {"run": request.run_id}}
        part = self.contribute_part(ctx, grant, request.run_id, list(request.mask_keys))
        key = PaillierPublicKey(sum_params(grant.spec.params).paillier_n)
        sums, counts, withheld = ([paillier.ciphertext_to_bytes(key, c) for c in v]
                                  for v in part.vectors)
        response = sum_pb2.SumPart(node=ctx.name, sums=sums, counts=counts, withheld=withheld)
        call.details = {"sum": part.details}
        return Outcome(response=response, meters=part.meters, datasets=(grant.dataset.ref,),
                       digest=_digest(sums, counts, withheld), effect=part.effect)

    # ------------------------------------------------------------------ audit

    def replay(self, conn: sqlite3.Connection, home: NodeHome, index: int,
               record: Mapping[str, Any], workers: sandbox.Workers) -> Replayed:
        """Recompute this node's local aggregate from the pinned snapshot; check the
        commitment in the log with the salt kept in the node's state."""
        job = record["job"]
        logged = record["details"]["sum"]["commitment"]
        row = conn.execute("SELECT canonical FROM jobs WHERE id = ?", (job,)).fetchone()
        salt = conn.execute("SELECT salt FROM sum_parts WHERE log_index = ?", (index,)).fetchone()
        if row is None or salt is None:
            return Replayed(index, job, logged, "error: the job or the part's salt is not in "
                                                "the node's state")
        spec = spec_from_canonical(bytes(row[0]))
        p = sum_params(spec.params)
        [ref] = record["datasets"]
        name, _, sha = ref.partition("@")
        ds = catalog.version(conn, name, sha)
        q = _local_query(spec, home.config.name, ds, home.snapshots, home.config,
                         columns=record["details"]["sum"]["query"]["columns"])
        try:
            if spec.dp is not None:
                dq = queries.validate_dp(q, _limits(home.config, p), _dp_spec(spec, p))
                exact = queries.run_dp(q, _limits(home.config, p), _dp_spec(spec, p), workers)
                local = _dp_local(dq, exact, dp.noise_of(conn, index), p, home.config.name)
            else:
                local = _aggregate(queries.run(q, _limits(home.config, p), workers), p,
                                   home.config.name)
            replayed = _commit(local.encode(), bytes(salt[0]))
        except VeilError as exc:
            replayed = f"error: {exc}"
        return Replayed(index, job, logged, replayed)

    def _encryptor(self, key: PaillierPublicKey) -> paillier.Encryptor:
        """One per key (its fixed-base tables take ~0.2 s to build), a few kept."""
        with self._lock:
            enc = self._encryptors.get(key.n)
            if enc is not None:
                self._encryptors.move_to_end(key.n)
                return enc
        try:
            enc = paillier.Encryptor(key)
        except ProtocolInputError as exc:
            raise InvalidInput(f"the job's Paillier key: {exc}") from None
        with self._lock:
            self._encryptors[key.n] = enc
            while len(self._encryptors) > 4:
                self._encryptors.popitem(last=False)
        return enc


SUM = SumKind()


# --------------------------------------------------------------------------- pieces


@dataclasses.dataclass(frozen=True)
class _Part:
    vectors: tuple[list[int], list[int], list[int]]  # sums, counts, withheld flags
    meters: Meters
    details: dict[str, Any]
    effect: Any


@dataclasses.dataclass(frozen=True)
class _Local:
    """A node's plaintext aggregate: per group, each column's sum (None: withheld), count."""

    params: SumParams
    sums: list[list[Decimal] | None]  # per group, one per column; None when withheld
    counts: list[int | None]

    def sum_slots(self) -> list[Decimal | None]:
        return [v for g in self.sums for v in (g if g is not None else [None] * len(self.params.columns))]

    def count_slots(self) -> list[int | None]:
        return list(self.counts)

    def flag_slots(self) -> list[int]:
        return [1 if c is None else 0 for c in self.counts]

    def encode(self) -> bytes:
        """Canonical bytes of the aggregate, for the commitment (and its replay)."""
        return canonical_json(
            {"sums": [None if g is None else [str(v) for v in g] for g in self.sums],
             "counts": self.counts})


def _local_query(spec: JobSpec, node: str, ds: DatasetVersion, snapshots: Path,
                 config: NodeConfig, columns: Sequence[str] | None = None) -> queries.QueryInputs:
    """The sandbox query of this node's local aggregate: the sum's own SQL, built here,
    run under the same rules as an analyst's query (so a sum can never reveal what a
    query could not), with the job's approved columns only."""
    p = sum_params(spec.params)
    part = spec.part(node)
    if part is None:
        raise InvalidInput(f"the job has no part for node {node!r}")
    items = [f'SUM("{c}") AS "s{i}"' for i, c in enumerate(p.columns)] + ['COUNT(*) AS "n"']
    group = f'"{p.group_by}"' if p.group_by else None
    sql = f"SELECT {group + ' AS g, ' if group else ''}{', '.join(items)} FROM \"{part.dataset}\""
    if p.where:
        sql += f" WHERE {p.where}"
    if group:
        sql += f" GROUP BY {group}"
    return queries.inputs_for(sql, part.columns if columns is None else columns, ds,
                              snapshots, config)


def _limits(config: NodeConfig, p: SumParams) -> sandbox.Limits:
    """The node's limits, with room for every declared category (and a few undeclared)."""
    lim = config.limits
    rows = max(lim.max_result_rows, p.groups * 2 + 1)
    return dataclasses.replace(lim, max_result_rows=rows,
                               max_result_bytes=max(lim.max_result_bytes, rows * 64 * (2 + len(p.columns))))


def _aggregate(result: sandbox.QueryResult, p: SumParams, node: str) -> _Local:
    """The result as one value per declared group and column; undeclared categories are
    dropped, and a declared one missing from the result (suppressed or empty) is withheld."""
    arrays = result.arrays
    index: dict[str | None, int] = (
        {c: i for i, c in enumerate(p.categories)} if p.group_by else {None: 0})
    sums: list[list[Decimal] | None] = [None] * p.groups
    counts: list[int | None] = [None] * p.groups
    keys = arrays["g"].tolist() if p.group_by else [None] * len(arrays["n"])
    quantum = Decimal(1).scaleb(-p.scale)
    columns = [arrays[f"s{i}"].tolist() for i in range(len(p.columns))]  # once: O(groups)
    rows = arrays["n"].tolist()
    for row, key in enumerate(keys):
        g = index.get(None if key is None and not p.group_by else str(key))
        if g is None:
            continue
        values = []
        for i, c in enumerate(p.columns):
            v = columns[i][row]
            d = Decimal(0) if v is None else (Decimal(repr(v)) if isinstance(v, float) else Decimal(v))
            if not d.is_finite():
                raise InvalidInput(f"column {c}: the local sum is not a finite number")
            d = d.quantize(quantum, rounding=ROUND_HALF_EVEN)
            if abs(d) > p.bound:
                raise PolicyDenied(
                    f"column {c}: a local sum at node {node!r} exceeds the job's bound "
                    f"({p.bound}); it encrypted and sent nothing"
                )
            values.append(d)
        sums[g] = values
        counts[g] = int(rows[row])
    return _Local(p, sums, counts)


def _dp_spec(spec: JobSpec, p: SumParams) -> sandbox.DpSpec:
    """The sandbox's bounds for a sum under differential privacy: the job's ``[dp]`` bounds,
    and the sum's own declared categories as the GROUP BY's."""
    assert spec.dp is not None
    if spec.dp.scale != p.scale:
        raise InvalidInput(f"dp.scale ({spec.dp.scale}) must equal the sum's params.scale "
                           f"({p.scale}): the noise is added in the sum's fixed-point units")
    declared = dict(spec.dp.categories)
    if p.group_by is not None:
        if declared.get(p.group_by, p.categories) != p.categories:
            raise InvalidInput(f"dp.categories.{p.group_by}: must be the sum's own categories "
                               "(or be left out)")
        declared[p.group_by] = p.categories
    return dataclasses.replace(dp.sandbox_spec(spec.dp), categories=declared)


@dataclasses.dataclass(frozen=True)
class _Noised:
    """This node's part under differential privacy: its noisy aggregate and what to log."""

    local: _Local
    meters: sandbox.Meters
    details: dict[str, Any]
    charge: Any  # the effect that spends the budget in the part's log entry


def _noised_local(ctx: NodeContext, grant: Grant, q: queries.QueryInputs,
                  p: SumParams) -> _Noised:
    """The exact bounded aggregate of this node plus its share of the noise.

    With a ρ (zCDP) job the nodes share the noise: each adds a discrete Gaussian sized by
    ``protocols.dp.shared`` so that the *total* of the n draws carries the job's ρ (Kairouz,
    Liu & Steinke 2021). No node adds all of it, so no single noisy part is as well
    protected as the total; but no part is ever seen alone (each is masked and encrypted,
    and only the total is decrypted). If t nodes pool their own draws with the analyst, the
    total keeps the noise of the other n - t: ρ grows to about ρ·n/(n - t) for the data of
    the nodes outside the coalition. With a pure ε job every node adds the full noise (the
    sum of discrete Laplace draws has no shared form), so each node's data keeps ε against
    any coalition, at √n times the total's error.
    """
    spec, config = grant.spec, ctx.home.config
    assert spec.dp is not None
    funded = dp.admit(ctx, spec, grant.dataset.name)
    dspec, lim = _dp_spec(spec, p), _limits(config, p)
    dq = queries.validate_dp(q, lim, dspec)
    exact = queries.run_dp(q, lim, dspec, ctx.workers)
    noises = dp.plan(spec.dp, [m.sensitivity for m in dq.measurements], nodes=len(spec.nodes))
    draws = [mech.draw(n, len(dq.cells)) for n in noises]
    local = _dp_local(dq, exact, draws, p, ctx.name)
    return _Noised(local, exact.meters, dp.log_details(funded.rule, funded.cost, dq, noises),
                   funded.charge(spec.analyst, dp.pack_noise(draws)))


def _dp_local(dq: Any, exact: Any, draws: Sequence[Sequence[int]], p: SumParams,
              node: str) -> _Local:
    """The noisy aggregate in the sum's layout: every declared group, never withheld."""
    noisy = {(m.kind, m.column): [x + n for x, n in zip(values, d)]
             for m, values, d in zip(dq.measurements, exact.values, draws)}
    quantum = Decimal(1).scaleb(-p.scale)
    sums: list[list[Decimal] | None] = []
    counts: list[int | None] = []
    for g in range(p.groups):
        values = [Decimal(noisy[("sum", c)][g]) * quantum for c in p.columns]
        for c, v in zip(p.columns, values):
            if abs(v) > p.bound:  # a function of the noisy value only: post-processing
                raise PolicyDenied(
                    f"column {c}: a noisy local sum at node {node!r} exceeds the job's bound "
                    f"({p.bound}); declare a larger bound; nothing was encrypted or sent"
                )
        sums.append(values)
        counts.append(noisy[("count", None)][g])
    return _Local(p, sums, counts)


def _open_mask_keys(ctx: NodeContext, spec: JobSpec, job: str, run_id: str,
                    keys: Sequence[sum_pb2.MaskKey]) -> dict[str, bytes]:
    """Every node's mask key, each checked: its certificate (this federation's CA, a node
    of that name), its signature, and that it is bound to this job, run and node."""
    names = [n.name for n in spec.nodes]
    if [k.node for k in keys] != names:
        raise InvalidInput(f"mask keys: expected one per node of the job in its order "
                           f"({', '.join(names)}), got {', '.join(k.node[:64] for k in keys)}")
    out = {}
    for k in keys:
        peer = ctx.trust.identify(k.certificate_pem.encode())
        if peer.role != "node" or peer.name != k.node:
            raise VerificationError(
                f"the mask key of node {k.node!r} is not certified for that node: its "
                f"certificate is for {peer.role} {peer.name[:64]!r}")
        try:
            signing.verify(peer.signing_key, signing.MASK_KEY, k.statement, k.signature)
        except signing.SignatureInvalid:
            raise VerificationError(f"the mask key of node {k.node!r} has a bad signature: "
                                    "it was altered or not made by that node") from None
        try:
            out[k.node] = masks.open_statement(k.statement, job, run_id, k.node)
        except masks.InvalidMaskKey as exc:
            raise VerificationError(str(exc)) from None
    return out


def _commit(data: bytes, salt: bytes) -> str:
    return hmac.new(salt, COMMIT_DOMAIN + data, hashlib.sha256).hexdigest()


def _ciphertexts(key: PaillierPublicKey, blobs: Sequence[bytes], expected: int,
                 node: str) -> list[int]:
    if len(blobs) != expected:
        raise InvalidInput(f"node {node!r} sent {len(blobs)} ciphertexts, expected {expected}")
    try:
        return [paillier.ciphertext_from_bytes(key, bytes(b)) for b in blobs]
    except ProtocolInputError as exc:
        raise InvalidInput(f"node {node!r} sent a ciphertext that is not under the job's key: "
                           f"{exc}") from None


def _digest(*vectors: Sequence[bytes]) -> str:
    h = hashlib.sha256()
    for v in vectors:
        for b in v:
            h.update(len(b).to_bytes(4, "big") + b)
    return h.hexdigest()


def _digest_ints(key: PaillierPublicKey, cts: Sequence[int]) -> str:
    return _digest([paillier.ciphertext_to_bytes(key, c) for c in cts])


def _meters_proto(m: Meters) -> common_pb2.Meters:
    return common_pb2.Meters(**{k: v for k, v in m.to_dict().items() if v})


def _peer_call(ctx: NodeContext, node: str, address: str | None, method: str,
               request: Any) -> tuple[Any, common_pb2.Receipt]:
    """One call to a peer of the job, as this node, checking the peer's certificate; the
    peer's refusal comes back naming the peer."""
    if address is None:
        raise InvalidInput(f"the job gives no address for node {node!r}")
    ch = federation.channel(address, ctx.home.identity, node=node)
    try:
        stub = peer_pb2_grpc.PeerServiceStub(ch)
        try:
            response, rpc = getattr(stub, method).with_call(request, timeout=PEER_TIMEOUT_S)
        except grpc.RpcError as exc:
            wrong = federation.wrong_node(exc, address, node)
            if wrong is not None:
                raise wrong from None
            raise PeerFailed(node, address, exc) from None
        return response, peer_receipt(rpc.trailing_metadata())
    finally:
        ch.close()


def _gather(futures: Mapping[str, concurrent.futures.Future[Any]], call: Call, run_id: str,
            step: str) -> dict[str, Any]:
    """Every peer's answer to one step of the run, or one error naming every peer that
    failed it (also recorded in the aggregator's entry): a run that fails anywhere
    releases nothing."""
    answers, failed = {}, {}
    for name, future in futures.items():
        try:
            answers[name] = future.result()
        except VeilError as exc:
            failed[name] = exc
    if failed:
        details: dict[str, Any] = {"run": run_id, "step": step, "failed": list(failed)}
        if step == "contribute":  # these nodes sent their part, logged at their side
            details["contributed"] = list(answers)
        call.details = {"sum": details}
        raise RunFailed(failed)
    return answers


class PeerFailed(VeilError):
    """A peer of the job refused or could not be reached."""

    def __init__(self, node: str, address: str, exc: grpc.RpcError) -> None:
        code = exc.code()  # type: ignore[attr-defined]
        self.status = code.name if code.name != "UNKNOWN" else "UNAVAILABLE"
        details = (exc.details() or "")[:500]  # type: ignore[attr-defined]
        if code == grpc.StatusCode.UNAVAILABLE:
            what = f"node {node!r} at {address} could not be reached ({details})"
        else:
            what = f"node {node!r} refused its part: {code.name}: {details}"
        super().__init__(what)


class RunFailed(VeilError):
    """One or more peers failed a step of the run: it releases nothing. The status is the
    first failing node's (in the job's order); the message names every one."""

    def __init__(self, failed: Mapping[str, VeilError]) -> None:
        self.failed = dict(failed)
        self.status = next(iter(failed.values())).status
        super().__init__("; ".join(str(e) for e in failed.values()) + "; no total was released")
