"""The README's event-log section: its JSON examples are real events and its topic
names the defaults."""

from __future__ import annotations

import json
import re
from pathlib import Path

from protege.events.consumer import parse_event
from protege.events.topics import topic_names
from protege.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def section() -> str:
    text = README.read_text()
    start = text.index("## Event log")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_every_json_example_is_a_valid_event_of_each_kind():
    blocks = re.findall(r"```json\n(.*?)```", section(), flags=re.DOTALL)
    events = [parse_event(block) for block in blocks]
    assert [e.kind for e in events] == ["prediction", "feedback", "model"]
    for block, event in zip(blocks, events, strict=True):
        assert json.loads(event.model_dump_json()) == json.loads(block)  # no field left out


def test_documented_topics_are_the_defaults():
    text = section()
    for name in topic_names(Settings()).values():
        assert f"`{name}`" in text
