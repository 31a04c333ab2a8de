"""A node's directory: its layout, its creation, and loading everything a node runs on.

```
NODEDIR/
  node.toml            configuration, policy and tariff (documented inline)
  state.db             SQLite: catalog, jobs, approvals, meters and the log
  snapshots/           immutable Parquet snapshots, named by their SHA-256
  identity/            tls.key, tls.crt, sign.key (owner-only), ca.crt, crl.pem if any
```
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from veil.node import pki, state
from veil.node.audit import NoteSigner
from veil.node.config import NodeConfig, default_config_text, load_config
from veil.node.errors import AlreadyExists, ConfigError, InvalidInput
from veil.node.log import Log, event

IDENTITY_FILES = ("tls.key", "tls.crt", "sign.key", "ca.crt")


@dataclass(frozen=True)
class NodeHome:
    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / "node.toml"

    @property
    def state_path(self) -> Path:
        return self.path / "state.db"

    @property
    def snapshots(self) -> Path:
        return self.path / "snapshots"

    @property
    def identity_dir(self) -> Path:
        return self.path / "identity"

    @property
    def crl_path(self) -> Path:
        return self.identity_dir / "crl.pem"

    def check(self) -> None:
        if not self.config_path.is_file() or not self.state_path.is_file():
            raise ConfigError(
                f"{self.path} is not a Veil node directory (no node.toml or state.db); "
                "create one with `veil node init`"
            )

    @cached_property
    def config(self) -> NodeConfig:
        self.check()
        return load_config(self.path)

    @cached_property
    def identity(self) -> pki.LocalIdentity:
        return pki.load_identity(self.identity_dir)

    def trust(self) -> pki.TrustStore:
        """The federation CA and CRL; ``identity/crl.pem`` may link to the federation's CRL."""
        crl = self.crl_path if self.crl_path.exists() else None
        return pki.TrustStore.load(self.identity_dir / "ca.crt", crl)

    @property
    def origin(self) -> str:
        """The checkpoint origin (and signed-note key name) of this node's log."""
        ident = self.identity.identity
        return f"veil.{ident.federation}/{ident.name}".replace(" ", "-")

    def signer(self) -> NoteSigner:
        return pki.note_signer(self.identity, self.origin)

    def open_log(self) -> Log:
        return Log(self.state_path, self.signer(), self.origin)

    def connect(self):  # type: ignore[no-untyped-def]
        self.check()
        return state.connect(self.state_path)


def init_node(
    node_dir: Path,
    name: str,
    *,
    identity_dir: Path | None = None,
    federation_dir: Path | None = None,
    listen: str = "127.0.0.1:7400",
    hosts: tuple[str, ...] = (),
) -> NodeHome:
    """Create a node directory, all or nothing.

    The node's identity comes either from ``identity_dir`` (made by ``veil pki issue
    --role node``) or is issued here from ``federation_dir``. The directory is built
    beside its final place and renamed into it, so a failure leaves nothing behind.
    """
    if node_dir.exists():
        raise AlreadyExists(f"node directory {node_dir} already exists; choose a new path")
    if (identity_dir is None) == (federation_dir is None):
        raise InvalidInput("give exactly one of --identity DIR or --federation DIR")
    parent = node_dir.resolve().parent
    if not parent.is_dir():
        raise InvalidInput(f"parent directory {parent} does not exist")
    tmp = Path(tempfile.mkdtemp(prefix=f".{node_dir.name}.", dir=parent))
    try:
        os.chmod(tmp, 0o700)
        home = NodeHome(tmp)
        if federation_dir is not None:
            pki.issue(federation_dir, "node", name, home.identity_dir, hosts=hosts)
            crl = federation_dir / "crl.pem"
            if crl.exists():
                # a link, so that `veil pki revoke` reaches this node without a copy step
                home.crl_path.symlink_to(crl.resolve())
        else:
            assert identity_dir is not None
            _copy_identity(identity_dir, home.identity_dir)
        ident = pki.load_identity(home.identity_dir).identity
        if ident.role != "node":
            raise InvalidInput(
                f"identity in {identity_dir} has role {ident.role!r}; a node needs a 'node' "
                f"certificate (`veil pki issue FEDDIR --role node --name {name} --out DIR`)"
            )
        if ident.name != name:
            raise InvalidInput(
                f"identity in {identity_dir} is for {ident.name!r}, not {name!r}"
            )
        home.snapshots.mkdir()
        home.config_path.write_text(default_config_text(name, listen))
        state.create(home.state_path)
        log = home.open_log()
        try:
            log.append(event("node.initialized", name=name, certificate=ident.fingerprint))
        finally:
            log.close()
        os.rename(tmp, node_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return NodeHome(node_dir)


def _copy_identity(src: Path, dst: Path) -> None:
    missing = [f for f in IDENTITY_FILES if not (src / f).is_file()]
    if missing:
        raise InvalidInput(
            f"identity directory {src} lacks {', '.join(missing)}; make one with `veil pki issue`"
        )
    dst.mkdir(mode=0o700)
    for f in IDENTITY_FILES:
        shutil.copyfile(src / f, dst / f)
        os.chmod(dst / f, 0o600 if f.endswith(".key") else 0o644)
