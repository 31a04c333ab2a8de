"""The one object every service of a node shares: its directory, log, state and grants."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from veil import sandbox
from veil.node.errors import PolicyDenied
from veil.node.grants import Grants
from veil.node.home import NodeHome
from veil.node.jobs import check_analyst
from veil.node.log import Log
from veil.node.pki import Identity, TrustStore

VERSION = "0.1.0"


@dataclass
class NodeContext:
    """Shared state of one running node; services read it, only grants and the log write."""

    home: NodeHome
    log: Log
    conn: sqlite3.Connection = field(repr=False)
    trust: TrustStore = field(repr=False)  # the federation's CA and revocations (the gate's)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    grants: Grants = field(init=False, repr=False)
    workers: sandbox.Workers = field(init=False, repr=False)  # where queries run

    def __post_init__(self) -> None:
        self.grants = Grants(self.conn, self.lock, self.log, self.home.config, self.home.snapshots)
        self.workers = sandbox.Workers(self.home.config.workers)
        self._psi_pool: Any = None
        self._psi_lock = threading.Lock()

    def psi_pool(self) -> Any:
        """The node's PSI blinding pool (one worker per core), started once, on first use or
        in the background when the first PSI job is submitted (:meth:`warm_psi`)."""
        with self._psi_lock:
            if self._psi_pool is None:
                from veil.protocols.psi import BlindPool

                self._psi_pool = BlindPool()
            return self._psi_pool

    def warm_psi(self) -> None:
        """Start the PSI pool off the hot path of the first run."""
        if self._psi_pool is None:
            threading.Thread(target=self.psi_pool, name="psi-pool-start", daemon=True).start()

    def close(self) -> None:
        """Stop the node's worker processes."""
        self.workers.close()
        with self._psi_lock:
            if self._psi_pool is not None:
                self._psi_pool.close()
                self._psi_pool = None


    @property
    def name(self) -> str:
        return self.home.config.name

    @cached_property
    def cert_pem(self) -> str:
        """The node's certificate, sent with every catalog listing: read once."""
        return self.home.identity.read_tls_cert().decode()

    @cached_property
    def log_vkey(self) -> str:
        return self.home.signer().vkey

    def deny(self, who: Identity) -> str | None:
        """The negative list, checked by the gate on every call of an analyst."""
        if who.role == "analyst":
            try:
                check_analyst(who.name, self.home.config.policy)
            except PolicyDenied as exc:
                return str(exc)
        return None
