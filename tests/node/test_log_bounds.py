"""The log's last line of defence: no entry over MAX_ENTRY_BYTES is ever stored.

An oversize record is replaced by a bounded refusal entry (kind, size and digest of what
was refused, never its content): never dropped, its effect never run, the writer alive.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from veil.node.bounds import MAX_ENTRY_BYTES, echo, status_message, MAX_STATUS_MESSAGE
from veil.node.log import EntryTooLarge, event
from tests.node.test_log import new_log


def test_oversize_record_is_replaced_by_a_bounded_refusal_entry(tmp_path: Path) -> None:
    log, _ = new_log(tmp_path)
    ran: list[int] = []

    def effect(_conn: sqlite3.Connection, index: int) -> None:
        ran.append(index)

    try:
        log.append(event("before"))
        huge = {"kind": "call", "method": "/x/Y", "message": "m" * (2 * MAX_ENTRY_BYTES)}
        with pytest.raises(EntryTooLarge, match=f"over the limit of {MAX_ENTRY_BYTES} bytes") as info:
            log.append(huge, effect=effect)
        assert ran == [], "the effect of a refused record ran"
        index = info.value.receipt.log_index
        assert index == 1 and log.size() == 2, "the oversize record was dropped, not replaced"
        data = log.entry(index)
        assert len(data) <= MAX_ENTRY_BYTES
        refusal = json.loads(data)
        assert refusal["kind"] == "refused"
        assert refusal["refused_method"] == "/x/Y"
        assert refusal["entry_bytes"] > 2 * MAX_ENTRY_BYTES
        assert len(refusal["entry_sha256"]) == 64
        # the writer is alive and the next append lands after the refusal
        assert log.append(event("after")).log_index == 2
        assert max(len(d) for _, d in log.entries(0, log.size())) <= MAX_ENTRY_BYTES
    finally:
        log.close()


def test_echo_keeps_a_prefix_and_a_digest_of_the_whole() -> None:
    assert echo("short") == "'short'"
    long = "a" * 10_000
    text = echo(long)
    assert len(text) < 200
    assert hashlib.sha256(long.encode()).hexdigest() in text
    assert "10000 characters" in text


def test_status_messages_are_cut_to_fit_the_trailer() -> None:
    cut = status_message("é" * 100_000)
    assert len(cut.encode()) <= MAX_STATUS_MESSAGE
    assert "message cut from 200000 bytes" in cut


def test_every_request_carrying_a_job_or_run_id_has_its_shape_checked() -> None:
    """A new rpc whose request carries an id must shape it before any lookup or log."""
    from veil.node import bounds
    from veil.node.server import tables  # noqa: F401  (imports every service's protos)
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.Default()
    missing = []
    for name in ("jobs", "query", "sum"):
        fd = pool.FindFileByName(f"veil/v1/{name}.proto")
        for service in fd.services_by_name.values():
            for method in service.methods:
                msg = method.input_type
                for field in ("job_id", "run_id"):
                    if field in msg.fields_by_name and field not in bounds.FIELDS.get(
                            msg.full_name, {}):
                        missing.append(f"{msg.full_name}.{field}")
    assert missing == []
