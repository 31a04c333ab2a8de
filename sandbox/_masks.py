"""Masks: SQL expressions that replace a column's value before anything else sees it.

A masked column is rewritten to its mask everywhere in the query (select list, WHERE,
GROUP BY, ORDER BY, aggregate arguments), so grouping happens on the masked text and only
masked text can reach the output. NULL stays NULL.

- ``phone``: keep the first 3 and the last 4 characters, a star for each one between:
  ``13812341234`` -> ``138****1234``; 7 characters or fewer become all stars.
- ``email``: keep the first character of the local part and the whole domain:
  ``alice@example.com`` -> ``a***@example.com``; text without ``@`` becomes all stars.
- ``id_number``: keep the first 6 (the region code of a Chinese resident ID) and the last 4:
  ``110105199001011234`` -> ``110105********1234``; 10 characters or fewer become all stars.
"""

from __future__ import annotations

from veil.sandbox._parse import Node, parse_expression, substitute

_INPUT = "__veil_mask_input"
_V = f"CAST({_INPUT} AS VARCHAR)"

_SQL = {
    "phone": (
        f"CASE WHEN length({_V}) > 7 "
        f"THEN concat(left({_V}, 3), repeat('*', length({_V}) - 7), right({_V}, 4)) "
        f"ELSE repeat('*', length({_V})) END"
    ),
    "email": (
        f"CASE WHEN strpos({_V}, '@') > 1 "
        f"THEN concat(left({_V}, 1), '***', substr({_V}, strpos({_V}, '@'))) "
        f"ELSE repeat('*', length({_V})) END"
    ),
    "id_number": (
        f"CASE WHEN length({_V}) > 10 "
        f"THEN concat(left({_V}, 6), repeat('*', length({_V}) - 10), right({_V}, 4)) "
        f"ELSE repeat('*', length({_V})) END"
    ),
}

# functions the masks use; the final queries may contain them even where analysts may not
FUNCTIONS = frozenset({"concat", "left", "right", "repeat", "length", "strpos", "substr"})


def mask(kind: str, column_ref: Node) -> Node:
    """The AST of ``kind``'s mask applied to ``column_ref``."""
    out: Node = substitute(parse_expression(_SQL[kind]), _INPUT, column_ref)
    return out
