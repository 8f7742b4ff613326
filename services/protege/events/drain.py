"""Empty a spool directory before its pod stops (`protege events drain`, the Helm chart's
preStop for the Ray head and CPU workers).

Every process that publishes events spools into a slot of its own, `<dir>/producer-<n>`,
while Kafka is away (`events.producer`). Before the pod goes, the slots should be empty:

- a live slot (its process still runs: a gateway replica) is sent by that process; the
  drain only watches it empty;
- a dead slot (its process is gone) is replayed here, by an `EventProducer` of the drain's
  own that adopts it, when Kafka settings are given; without them it stays on disk for the
  next producer that starts on this spool, and the drain does not wait for it.

`drain` returns as soon as nothing is left to wait for, or at the deadline. Kafka being away
never makes it fail: what is not sent stays on disk, in order, for a later replay.

>>> drain(Path("/var/lib/protege-spool"), timeout_s=90, settings=load_settings())  # doctest: +SKIP
DrainReport(drained=True, seconds=1.2, replayed=True, left={})
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from protege.events.spool import spool_in_use, unsent_records
from protege.settings import Settings

log = logging.getLogger(__name__)

POLL_S = 0.2  # how often the slots are looked at: cheap (one record read per slot)
ADOPT_EVERY_S = 1.0  # a slot whose process died during the drain is adopted this soon after
CLOSE_S = 1.0  # past the deadline, the drain's producer gets this long to stop (the spool is
# consistent on disk at every moment, so cutting it short loses nothing)
COUNT_LIMIT = 100_000  # events counted per slot for the report: a bound on the time it takes


@dataclass
class DrainReport:
    drained: bool  # nothing left that the drain waits for
    seconds: float
    replayed: bool  # the drain ran a producer of its own for dead slots
    left: dict[str, int] = field(default_factory=dict)  # slot -> unsent events still on disk

    def to_dict(self) -> dict:
        return asdict(self)


def producer_slots(spool_dir: Path) -> list[Path]:
    return sorted(p for p in Path(spool_dir).glob("producer-*") if p.is_dir())


def drain(spool_dir: Path | str, timeout_s: float, settings: Settings | None = None) -> DrainReport:
    """Wait until no producer slot under `spool_dir` holds an unsent event, replaying dead
    producers' slots when `settings` (with `kafka_bootstrap`) are given; at most `timeout_s`."""
    spool_dir = Path(spool_dir)
    started = time.monotonic()
    deadline = started + timeout_s
    producer = None
    replay = settings is not None and bool(settings.kafka_bootstrap)
    adopted_at = 0.0
    drained = False
    try:
        while True:
            unsent = {slot: unsent_records(slot, limit=1) for slot in producer_slots(spool_dir)}
            dead = [slot for slot, n in unsent.items() if n and not spool_in_use(slot)]
            if dead and replay:
                if producer is None:
                    producer = _replayer(settings, spool_dir)  # adopts the dead slots at start
                    replay = producer is not None
                    adopted_at = time.monotonic()
                elif time.monotonic() - adopted_at >= ADOPT_EVERY_S:
                    producer.adopt_orphans()  # a process that died since
                    adopted_at = time.monotonic()
            waited_for = [s for s, n in unsent.items() if n and (replay or s not in dead)]
            if not waited_for:
                drained = True
                break
            if time.monotonic() >= deadline:
                log.warning(
                    "spool %s not drained in %gs: %s still hold events",
                    spool_dir,
                    timeout_s,
                    ", ".join(s.name for s in waited_for),
                )
                break
            time.sleep(POLL_S)
    finally:
        if producer is not None:
            _close_within(producer, max(deadline - time.monotonic(), 0.0))
    left = {s.name: n for s in producer_slots(spool_dir) if (n := unsent_records(s, COUNT_LIMIT))}
    if left and not replay:
        log.info("left on disk for the next producer on this spool: %s", left)
    return DrainReport(drained, round(time.monotonic() - started, 2), producer is not None, left)


def _replayer(settings: Settings, spool_dir: Path):
    """An EventProducer on `spool_dir`: its start adopts and replays the dead slots."""
    from protege.events.producer import EventProducer

    try:
        return EventProducer(settings.model_copy(update={"events_spool_dir": spool_dir})).start()
    except Exception as exc:  # noqa: BLE001 - no replay, never a failed preStop
        log.warning("cannot replay the spool's dead slots: %r", exc)
        return None


def _close_within(producer, seconds: float) -> None:
    """Close the producer (delivering what it can in `seconds`), waiting no longer than that."""
    closer = threading.Thread(
        target=producer.close, kwargs={"timeout": seconds}, name="drain-close", daemon=True
    )
    closer.start()
    closer.join(seconds + CLOSE_S)
