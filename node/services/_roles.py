"""Who may call what: the role sets the service modules hand the gate."""

from veil.node.pki import APPROVER_ROLES, ROLES

ANY_ROLE = frozenset(ROLES)
AUDITOR = frozenset({"auditor"})
ANALYST = frozenset({"analyst"})
APPROVERS = frozenset(APPROVER_ROLES)
OPERATOR = frozenset({"operator"})
STATEMENT_READERS = frozenset({"analyst", "operator", "auditor"})
NODE = frozenset({"node"})
