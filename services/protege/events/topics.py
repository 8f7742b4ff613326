"""Topic names and creation: one topic per event kind, names and partitions from settings.

Predictions and feedback are keyed by `prediction_id`, so a prediction and its
feedback land on the same partition; model events are keyed by task.
"""

from __future__ import annotations

import logging

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from protege.events.client import client_config
from protege.settings import Settings

log = logging.getLogger(__name__)


def topic_names(settings: Settings) -> dict[str, str]:
    """Event kind -> topic name."""
    return {
        "prediction": settings.kafka_topic_predictions,
        "feedback": settings.kafka_topic_feedback,
        "model": settings.kafka_topic_models,
        "retrain": settings.kafka_topic_models,  # requests for the improver ride with model events
    }


def ensure_topics(settings: Settings, timeout_s: float = 10.0) -> list[str]:
    """Create the event topics that do not exist yet; return the names created.

    Existing topics are left as they are, whatever their partition count.
    """
    wanted = list(dict.fromkeys(topic_names(settings).values()))
    admin = KafkaAdminClient(**client_config(settings), request_timeout_ms=int(timeout_s * 1000))
    try:
        existing = set(admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        _warn_on_partition_mismatch(admin, [n for n in wanted if n in existing], settings)
        if not missing:
            return []
        new_topics = [
            NewTopic(name, settings.kafka_partitions, settings.kafka_replication_factor)
            for name in missing
        ]
        created = []
        try:
            response = admin.create_topics(new_topics, timeout_ms=int(timeout_s * 1000))
        except TopicAlreadyExistsError:  # another process won the race
            return []
        for topic in _topic_results(response):
            if topic["error_code"] == 0:
                created.append(topic["name"])
            elif topic["error_code"] != TopicAlreadyExistsError.errno:
                raise RuntimeError(f"creating topic {topic['name']}: {topic}")
        if created:
            log.info("created topics %s (%d partitions)", created, settings.kafka_partitions)
        return created
    finally:
        admin.close()


def _warn_on_partition_mismatch(
    admin: KafkaAdminClient, names: list[str], settings: Settings
) -> None:
    # A broker that auto-creates topics (Tansu does, on produce after a restart of its
    # memory storage) may have picked its own count. Consumers cope; co-partitioning of
    # predictions and feedback by number does not hold any more, so say so.
    if not names:
        return
    try:
        described = admin.describe_topics(names)
    except Exception:  # noqa: BLE001 - informational only
        return
    for topic in described:
        count = len(topic.get("partitions") or [])
        if count and count != settings.kafka_partitions:
            log.warning(
                "topic %s has %d partitions, not the configured %d",
                topic.get("name"),
                count,
                settings.kafka_partitions,
            )


def _topic_results(response: object) -> list[dict]:
    # kafka-python 3 answers a dict; older versions a response object.
    if isinstance(response, dict):
        return [
            {"name": t["name"], "error_code": t.get("error_code", 0)} for t in response["topics"]
        ]
    return [{"name": t[0], "error_code": t[1]} for t in response.topic_errors]  # pragma: no cover
