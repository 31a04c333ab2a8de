"""The node's gRPC services: one module per service in ``veil.v1``.

Each module names its service and supplies, per method, the roles that may call it and its
handler (``rpcs(ctx)``); the gate (``node/_rpc.py``) takes names, message types and
streaming shapes from the generated descriptors and refuses to start when a module and the
protos disagree. ``tests/node/test_services.py`` checks that every rpc of every ``.proto`` is
served.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType

from veil.node._rpc import Rpc
from veil.node.context import NodeContext
from veil.node.services import audit, catalog, jobs, node, peer, psi, query, sum, usage

MODULES: tuple[ModuleType, ...] = (node, catalog, audit, jobs, query, sum, psi, peer, usage)


def tables(ctx: NodeContext) -> dict[str, Mapping[str, Rpc]]:
    """Every served service's full name, with its methods' rpcs."""
    return {m.SERVICE: m.rpcs(ctx) for m in MODULES}
