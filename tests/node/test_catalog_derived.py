"""A PSI membership result as a new dataset version (catalog.stage_derived, snapshot.subset):
the chosen rows of the source, classified like it, inserted only by the effect that commits
with the call's log entry, and refused when it would lower an existing version's level."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from veil.node import catalog, snapshot
from veil.node.errors import NotFound, PolicyDenied

from tests.conftest import Federation, make_node, write_customers


def _registered(federation: Federation, tmp_path: Path, levels: dict[str, str]):  # type: ignore[no-untyped-def]
    home = make_node(federation, tmp_path, "bank-a")
    conn, log = home.connect(), home.open_log()
    src = write_customers(tmp_path / "customers.csv")
    catalog.register(conn, log, home.identity, home.snapshots, node="bank-a", name="customers",
                     source=src, key_column="customer_id", levels=levels)
    return home, conn, log


def test_a_derived_version_holds_the_chosen_rows_and_exists_only_with_its_entry(
    federation: Federation, tmp_path: Path
) -> None:
    home, conn, log = _registered(federation, tmp_path, {"region": "public"})
    try:
        source = catalog.current(conn, "customers")
        snap = snapshot.subset(source.snapshot_path(home.snapshots), [1, 4, 7], home.snapshots)
        ids = [r[0] for r in duckdb.connect().sql(f"SELECT customer_id FROM '{snap.path}'").fetchall()]
        all_ids = [r[0] for r in duckdb.connect().sql(
            f"SELECT customer_id FROM '{source.snapshot_path(home.snapshots)}'").fetchall()]
        assert ids == [all_ids[1], all_ids[4], all_ids[7]]
        staged = catalog.stage_derived(conn, home.identity, node="bank-a", name="shared",
                                       snap=snap, source=source)
        with pytest.raises(NotFound):  # staged, not stored
            catalog.current(conn, "shared")
        log.append({"kind": "event", "event": "test.psi"}, effect=staged.effect)
        version = catalog.current(conn, "shared")
        assert (version.version, version.rows) == (staged.version, 3) == (1, 3)
        assert version.levels() == source.levels()
    finally:
        log.close()
        conn.close()


def test_a_derived_version_may_not_lower_a_level_of_the_existing_dataset(
    federation: Federation, tmp_path: Path
) -> None:
    home, conn, log = _registered(federation, tmp_path, {"region": "public"})
    try:
        # "shared" exists with region sensitive; a result classified like customers (public)
        # would lower it
        catalog.register(conn, log, home.identity, home.snapshots, node="bank-a", name="shared",
                         source=tmp_path / "customers.csv", key_column="customer_id",
                         levels={"region": "sensitive"})
        source = catalog.current(conn, "customers")
        snap = snapshot.subset(source.snapshot_path(home.snapshots), [0], home.snapshots)
        with pytest.raises(PolicyDenied, match="column 'region' is sensitive .* would lower it"):
            catalog.stage_derived(conn, home.identity, node="bank-a", name="shared",
                                  snap=snap, source=source)
    finally:
        log.close()
        conn.close()


def test_a_derived_dataset_spends_its_sources_privacy_budget(
    federation: Federation, tmp_path: Path
) -> None:
    """A subset of the same customers under a new name is not a fresh budget: its privacy
    unit is its source's, through any chain of derivations, and only the source's budget is
    listed."""
    from decimal import Decimal

    from veil.node import dp
    from veil.node.jobs import BudgetRule, DpPolicy

    home, conn, log = _registered(federation, tmp_path, {"region": "public"})
    try:
        source = catalog.current(conn, "customers")
        for name, parent in (("shared", source), ("shared_again", None)):
            parent = parent or catalog.current(conn, "shared")
            snap = snapshot.subset(parent.snapshot_path(home.snapshots), [0, 1], home.snapshots)
            staged = catalog.stage_derived(conn, home.identity, node="bank-a", name=name,
                                           snap=snap, source=parent)
            log.append({"kind": "event", "event": "test.psi"}, effect=staged.effect)
        assert [catalog.privacy_unit(conn, n) for n in ("customers", "shared", "shared_again")] \
            == ["customers"] * 3
        policy = DpPolicy(budgets=(BudgetRule("epsilon", Decimal(1), Decimal(1)),))
        listed = dp.standings(conn, policy, "alice", ["customers", "shared", "shared_again"])
        assert [s.dataset for s in listed] == ["customers"]
    finally:
        log.close()
        conn.close()
