"""An append-only disk spool: where events wait while Kafka cannot take them.

Records are appended to numbered segment files and read back in the order they
were written. A cursor file remembers how far replay got; segments behind it are
deleted. Appends reach the OS at once and are fsync'd in batches (`sync()`), so a
process crash loses nothing and a power cut at most the last fsync interval. A
record torn by a crash mid-write is cut off when the spool is reopened.

Replay is at-least-once: a record delivered but not yet `commit()`-ed when the
process dies is replayed again, which consumers absorb by deduplicating on
event_id.

On disk, each record is::

    magic (1 byte) | body length (u32) | crc32 of body (u32) | body
    body = topic length (u16) | topic | key length (i32, -1 = none) | key | value

>>> spool = Spool(tmp_path, max_bytes=1 << 20)             # doctest: +SKIP
>>> spool.append("protege.predictions", b"key", b"{...}")   # doctest: +SKIP
True
>>> batch = spool.read(100)                                  # doctest: +SKIP
>>> spool.commit(batch[-1].position)                         # doctest: +SKIP
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MAGIC = 0xE5
HEADER = struct.Struct(">BII")  # magic, body length, crc32(body)
SEGMENT_SUFFIX = ".spool"
CURSOR_FILE = "cursor.json"
LOCK_FILE = ".lock"


class SpoolBusy(RuntimeError):
    """Another Spool (in this or another process) holds the directory."""


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    topic: str
    key: bytes | None
    value: bytes
    position: tuple[int, int]  # (segment, offset just past this record): commit() takes it


def encode_record(topic: str, key: bytes | None, value: bytes) -> bytes:
    topic_bytes = topic.encode()
    key_len = -1 if key is None else len(key)
    body = b"".join(
        (
            struct.pack(">H", len(topic_bytes)),
            topic_bytes,
            struct.pack(">i", key_len),
            key or b"",
            value,
        )
    )
    return HEADER.pack(MAGIC, len(body), zlib.crc32(body)) + body


def _decode_body(body: bytes) -> tuple[str, bytes | None, bytes]:
    (topic_len,) = struct.unpack_from(">H", body, 0)
    topic = body[2 : 2 + topic_len].decode()
    at = 2 + topic_len
    (key_len,) = struct.unpack_from(">i", body, at)
    at += 4
    key = None if key_len < 0 else body[at : at + key_len]
    at += max(key_len, 0)
    return topic, key, body[at:]


def _scan(data: bytes) -> tuple[list[tuple[int, int]], int]:
    """(start, end) of each intact record from the start of `data`, and where intact data ends."""
    spans, at = [], 0
    while at + HEADER.size <= len(data):
        magic, length, crc = HEADER.unpack_from(data, at)
        end = at + HEADER.size + length
        if magic != MAGIC or end > len(data) or zlib.crc32(data[at + HEADER.size : end]) != crc:
            break
        spans.append((at, end))
        at = end
    return spans, at


class Spool:
    """Segment files in `directory`, at most `max_bytes` on disk; thread-safe.

    Parameters
    ----------
    directory:
        Created when missing. Held with an exclusive lock (`SpoolBusy` when taken),
        so that two processes never write one spool.
    max_bytes:
        Disk budget. An append that would exceed it is refused (`append` returns False).
    segment_bytes:
        A segment is closed and a new one begun once it reaches this size.
    """

    def __init__(self, directory: Path | str, max_bytes: int, segment_bytes: int = 16 << 20):
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._dirty = False
        self.directory.mkdir(parents=True, exist_ok=True)
        self._sizes: dict[int, int] = {}  # segment id -> bytes of intact records
        self._pending = 0
        self._lock_fd: int | None = None
        self._acquire()
        self._recover()

    def _acquire(self) -> None:
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolBusy(f"spool {self.directory} is in use") from None
        self._lock_fd = fd

    def _reopen(self) -> bool:
        """After close(): take the directory again and reread it (someone may have replayed it)."""
        if self._lock_fd is not None:
            return True
        try:
            self._acquire()
        except SpoolBusy:
            return False
        self._sizes, self._pending = {}, 0
        self._recover()
        return True

    # ------------------------------------------------------------------ state

    @property
    def pending(self) -> int:
        """Records written and not yet committed as delivered."""
        return self._pending

    @property
    def disk_bytes(self) -> int:
        return sum(self._sizes.values())

    def __len__(self) -> int:
        return self._pending

    def _path(self, segment: int) -> Path:
        return _segment_path(self.directory, segment)

    def _recover(self) -> None:
        segments = _segments(self.directory)
        cursor = _start_of(segments, _read_cursor(self.directory))
        for segment in segments:
            if segment < cursor[0]:  # fully replayed before a crash; only the delete was lost
                self._path(segment).unlink(missing_ok=True)
                continue
            data = self._path(segment).read_bytes()
            spans, intact = _scan(data)
            if intact < len(data):
                log.warning(
                    "spool %s: cutting %d bytes of a torn or corrupt record",
                    self._path(segment),
                    len(data) - intact,
                )
                os.truncate(self._path(segment), intact)
            self._sizes[segment] = intact
            start = cursor[1] if segment == cursor[0] else 0
            self._pending += sum(1 for s, _ in spans if s >= start)
        self._cursor = cursor
        self._active = max(self._sizes, default=cursor[0])
        if self._pending:
            log.info("spool %s: %d events left to replay", self.directory, self._pending)

    def _write_cursor(self) -> None:
        tmp = self.directory / f".{CURSOR_FILE}.tmp"
        tmp.write_text(json.dumps({"segment": self._cursor[0], "offset": self._cursor[1]}))
        os.replace(tmp, self.directory / CURSOR_FILE)

    # ------------------------------------------------------------------ writing

    def append(self, topic: str, key: bytes | None, value: bytes) -> bool:
        """Write one record; False when the disk budget has no room for it."""
        record = encode_record(topic, key, value)
        with self._lock:
            if not self._reopen():
                return False
            if self.disk_bytes + len(record) > self.max_bytes:
                return False
            if self._fd is None or self._sizes.get(self._active, 0) >= self.segment_bytes:
                self._open_segment()
            os.write(self._fd, record)
            self._sizes[self._active] += len(record)
            self._pending += 1
            self._dirty = True
            return True

    def _open_segment(self) -> None:
        self._close_fd()
        if self._sizes.get(self._active, 0) >= self.segment_bytes:
            self._active += 1
        self._fd = os.open(self._path(self._active), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._sizes.setdefault(self._active, os.fstat(self._fd).st_size)
        self._fsync_directory()

    def _fsync_directory(self) -> None:
        try:
            fd = os.open(self.directory, os.O_RDONLY)
        except OSError:  # pragma: no cover - not every OS opens directories
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def sync(self) -> None:
        """fsync what was appended since the last call (cheap when nothing was)."""
        with self._lock:
            if self._fd is not None and self._dirty:
                os.fsync(self._fd)
                self._dirty = False

    # ------------------------------------------------------------------ reading

    def read(self, max_records: int, max_bytes: int = 4 << 20) -> list[SpoolRecord]:
        """Up to `max_records` records from the cursor on, oldest first; does not advance it."""
        records: list[SpoolRecord] = []
        with self._lock:
            segment, offset = self._cursor
            budget = max_bytes
            while len(records) < max_records and segment in self._sizes:
                size = self._sizes[segment]
                if offset < size:
                    with open(self._path(segment), "rb") as f:
                        f.seek(offset)
                        data = f.read(min(size - offset, max(budget, 1)))
                    spans, _ = _scan(data)
                    if not spans and len(data) < size - offset:
                        # One record bigger than the byte budget: read it whole.
                        with open(self._path(segment), "rb") as f:
                            f.seek(offset)
                            data = f.read(size - offset)
                        spans, _ = _scan(data)
                        spans = spans[:1]
                    for start, end in spans[: max_records - len(records)]:
                        body = data[start + HEADER.size : end]
                        topic, key, value = _decode_body(body)
                        records.append(SpoolRecord(topic, key, value, (segment, offset + end)))
                        budget -= end - start
                    if len(records) >= max_records or budget <= 0 or not spans:
                        break
                    offset = records[-1].position[1]
                    if offset < size:
                        continue
                next_segments = [s for s in self._sizes if s > segment]
                if not next_segments:
                    break
                segment, offset = min(next_segments), 0
        return records

    def commit(self, position: tuple[int, int], count: int) -> None:
        """Mark the `count` records up to `position` (a record's `.position`) as delivered."""
        with self._lock:
            self._cursor = position
            self._pending = max(self._pending - count, 0)
            for segment in [s for s in self._sizes if s < position[0]]:
                self._drop_segment(segment)
            segment, offset = position
            if offset >= self._sizes.get(segment, 0):
                if segment == self._active:
                    if self._pending == 0:
                        # Fully drained: start the next append on a fresh, empty segment.
                        self._close_fd()
                        self._drop_segment(segment)
                        self._active += 1
                        self._cursor = (self._active, 0)
                else:
                    self._drop_segment(segment)
                    later = [s for s in self._sizes if s > segment]
                    self._cursor = (min(later), 0) if later else (self._active, 0)
            self._write_cursor()

    def _drop_segment(self, segment: int) -> None:
        self._sizes.pop(segment, None)
        self._path(segment).unlink(missing_ok=True)

    def _close_fd(self) -> None:
        if self._fd is not None:
            if self._dirty:
                os.fsync(self._fd)
                self._dirty = False
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """fsync, close and release the directory. Appending again takes it back if free."""
        with self._lock:
            self._close_fd()
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    def __repr__(self) -> str:
        return f"Spool({self.directory}, pending={self._pending}, bytes={self.disk_bytes})"


def _read_cursor(directory: Path) -> tuple[int, int] | None:
    try:
        raw = json.loads((directory / CURSOR_FILE).read_text())
        return int(raw["segment"]), int(raw["offset"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        # Replaying from the first segment again only duplicates; never lose records.
        log.warning("spool %s: unreadable cursor, replaying from the start", directory)
        return None


def _start_of(segments: list[int], cursor: tuple[int, int] | None) -> tuple[int, int]:
    """Where replay starts: the cursor, or the first segment when it has none (or is behind)."""
    if cursor is None or (segments and cursor[0] < segments[0]):
        return (segments[0] if segments else 0, 0)
    return cursor


def _segment_path(directory: Path, segment: int) -> Path:
    return directory / f"{segment:012d}{SEGMENT_SUFFIX}"


def _segments(directory: Path) -> list[int]:
    return sorted(int(p.stem) for p in directory.glob(f"*{SEGMENT_SUFFIX}") if p.stem.isdigit())


def spool_in_use(directory: Path | str) -> bool:
    """Whether a live Spool (in any process, this one included) holds `directory`."""
    try:
        fd = os.open(Path(directory) / LOCK_FILE, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the probe's lock, if it got one
    return False


def unsent_records(directory: Path | str, limit: int | None = None) -> int:
    """Records in a spool directory not yet committed as delivered (at most `limit`),
    read without taking the directory: its live producer may be appending and
    replaying meanwhile, so the answer is a snapshot, exact once it settles (a
    preStop watches it fall to zero). A torn last record is not counted."""
    directory = Path(directory)
    segments = _segments(directory)
    segment0, offset0 = _start_of(segments, _read_cursor(directory))
    count = 0
    for segment in (s for s in segments if s >= segment0):
        try:
            with open(_segment_path(directory, segment), "rb") as f:
                f.seek(offset0 if segment == segment0 else 0)
                while limit is None or count < limit:
                    header = f.read(HEADER.size)
                    if len(header) < HEADER.size:
                        break
                    magic, length, crc = HEADER.unpack(header)
                    body = f.read(length)
                    if magic != MAGIC or len(body) < length or zlib.crc32(body) != crc:
                        break
                    count += 1
        except FileNotFoundError:  # replayed and deleted while we looked
            continue
        if limit is not None and count >= limit:
            break
    return count
