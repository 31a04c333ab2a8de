"""The job language's kinds: for each, how many nodes it names and which parameters it takes.

One table, read by the spec parser, the policy and the configuration. Which kinds a node can
actually *run* is a different question, answered by the node's kind registry
(``veil.node.kinds``): every kind it registers is one of these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from collections.abc import Mapping

#: a job may not name more nodes than this
MAX_NODES = 64


@dataclass(frozen=True)
class KindSchema:
    name: str
    min_nodes: int
    max_nodes: int
    required: tuple[str, ...]
    defaults: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def node_count(self) -> str:
        """How many [[nodes]] this kind needs, in words."""
        if self.min_nodes == self.max_nodes:
            return f"exactly {self.min_nodes}"
        return f"between {self.min_nodes} and {self.max_nodes}"


SCHEMAS: Mapping[str, KindSchema] = MappingProxyType({
    s.name: s
    for s in (
        KindSchema("sum", 2, MAX_NODES, ("aggregator", "columns", "bound", "paillier_n")),
        # key or keys (exactly one), checked in _psi; the defaults are filled in there too
        KindSchema("psi", 2, 2, (), MappingProxyType({"normalize": "exact",
                                                      "output": "cardinality"})),
        KindSchema("intersection_sum", 2, 2, ("values", "bound", "paillier_n"),
                   MappingProxyType({"normalize": "exact", "scale": "0"})),
        KindSchema("query", 1, 1, ("sql",)),
    )
})

#: the computations a job can ask for, in the order messages list them
KINDS: tuple[str, ...] = tuple(SCHEMAS)
