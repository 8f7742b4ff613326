"""The disk spool: ordered, durable across reopen, bounded by its disk budget."""

from __future__ import annotations

import os

import pytest

from protege.events.spool import Spool, SpoolBusy


def fill(spool: Spool, n: int, start: int = 0) -> list[bytes]:
    values = [f'{{"n": {i}}}'.encode() for i in range(start, start + n)]
    for i, value in enumerate(values):
        assert spool.append("topic.a" if i % 2 else "topic.b", f"k{i}".encode(), value)
    return values


def drain(spool: Spool, batch: int = 7) -> list[bytes]:
    out = []
    while records := spool.read(batch):
        out.extend(r.value for r in records)
        spool.commit(records[-1].position, len(records))
    return out


def test_spool_returns_records_in_append_order_across_segments(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=200)
    values = fill(spool, 50)
    assert len(list(tmp_path.glob("*.spool"))) > 3  # it rolled
    first = spool.read(3)
    assert [r.topic for r in first] == ["topic.b", "topic.a", "topic.b"]
    assert [r.key for r in first] == [b"k0", b"k1", b"k2"]
    assert drain(spool) == values
    assert spool.pending == 0
    assert list(tmp_path.glob("*.spool")) == []  # delivered segments are deleted


def test_read_does_not_advance_until_commit(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    fill(spool, 5)
    assert [r.value for r in spool.read(2)] == [r.value for r in spool.read(2)]
    assert spool.pending == 5


def test_spool_survives_reopen_and_resumes_after_the_committed_cursor(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=300)
    values = fill(spool, 40)
    records = spool.read(15)
    spool.commit(records[-1].position, 15)
    spool.sync()
    spool.close()  # the process goes away

    reopened = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=300)
    assert reopened.pending == 25
    more = fill(reopened, 5, start=40)
    assert drain(reopened) == values[15:] + more


def test_reopen_cuts_a_record_torn_by_a_crash(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    values = fill(spool, 3)
    spool.close()
    segment = next(tmp_path.glob("*.spool"))
    with open(segment, "ab") as f:  # half a record, as a crash mid-write leaves it
        f.write(b"\xe5\x00\x00\x01\x00\x12\x34")
    reopened = Spool(tmp_path, max_bytes=1 << 20)
    assert reopened.pending == 3
    assert reopened.append("topic.a", None, b"after")
    assert drain(reopened) == values + [b"after"]


def test_unreadable_cursor_replays_from_the_start_rather_than_losing(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    values = fill(spool, 4)
    records = spool.read(2)
    spool.commit(records[-1].position, 2)
    spool.close()
    (tmp_path / "cursor.json").write_text("{not json")
    assert drain(Spool(tmp_path, max_bytes=1 << 20)) == values


def test_appends_past_the_disk_budget_are_refused_and_draining_frees_it(tmp_path):
    spool = Spool(tmp_path, max_bytes=1000, segment_bytes=300)
    accepted = sum(spool.append("t", b"k", b"x" * 80) for _ in range(30))
    assert 0 < accepted < 30
    assert spool.disk_bytes <= 1000
    assert not spool.append("t", b"k", b"x" * 80)
    drain(spool)
    assert spool.disk_bytes == 0
    assert spool.append("t", b"k", b"x" * 80)


def test_a_record_larger_than_the_read_budget_is_still_read(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    big = os.urandom(5000)
    spool.append("t", None, big)
    spool.append("t", None, b"small")
    records = spool.read(10, max_bytes=100)
    assert records[0].value == big and records[0].key is None
    assert drain(spool) == [big, b"small"]


def test_one_spool_directory_has_one_writer(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    with pytest.raises(SpoolBusy):
        Spool(tmp_path, max_bytes=1 << 20)
    spool.append("t", None, b"kept")
    spool.close()
    other = Spool(tmp_path, max_bytes=1 << 20)  # free again once closed
    assert drain(other) == [b"kept"]
