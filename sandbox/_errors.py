"""The sandbox's exceptions: one root, two meaningful subclasses.

Every message names the offending construct (a function, a table, a column, a clause or a
limit) and says what was expected, so an analyst can fix the query without asking anyone.
"""

from __future__ import annotations


class SandboxError(Exception):
    """Root of every error the sandbox raises on purpose.

    Raised as such for problems that are neither the analyst's query nor a limit: a snapshot
    file that is missing or does not match its declared schema, or a query that failed while
    running (the engine's own message is withheld then, because it may quote row values).
    """


class QueryRejected(SandboxError):
    """The query was refused by validation or by the analysis rules; no data was touched.

    ``construct`` names what was refused (``"function read_csv"``, ``"table 'x.csv'"``,
    ``"column 'salary'"``, ``"COPY statement"``), ``reason`` says why; the message is both.
    """

    def __init__(self, construct: str, reason: str) -> None:
        super().__init__(f"{construct} {reason}")
        self.construct = construct
        self.reason = reason


class QueryLimitExceeded(SandboxError):
    """The query hit one of the limits: ``limit`` is ``"timeout"``, ``"memory"``,
    ``"result rows"``, ``"result bytes"`` or ``"sql size"``."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit
