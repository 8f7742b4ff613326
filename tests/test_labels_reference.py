"""Acceptance figures on the shipped data: youtube's label model from WRENCH's weak
labels, and banking77's rules + prompts + simulated reviews (reduced here to keep the
suite fast; `bench/_references.py`'s `banking77_reference_report()` runs it in full)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from _references import banking77_reference_report, youtube_reference_report  # noqa: E402

MAJORITY_VOTE_REFERENCE = 0.84  # Snorkel's spam tutorial: 84.2 %


@pytest.fixture(scope="module")
def youtube():
    return youtube_reference_report()


def test_youtube_label_model_from_wrench_weak_labels_is_at_least_majority_vote(youtube):
    wrench = youtube["wrench_lfs"]
    assert wrench["chosen_test_accuracy"] >= MAJORITY_VOTE_REFERENCE
    assert wrench["chosen_test_accuracy"] >= wrench["majority"]["test_accuracy"]
    assert wrench["test_coverage"] > 0.9
    choice = wrench["choice"]  # chosen on the valid split (gold), and recorded
    assert choice["n_gold"] >= 100 and set(choice["gold_accuracy"]) == {"snorkel", "majority"}
    assert wrench["chosen"] == max(choice["gold_accuracy"], key=choice["gold_accuracy"].get)


def test_youtube_with_this_repos_own_lfs_also_clears_majority_vote(youtube):
    own = youtube["protege_lfs"]
    assert own["chosen_test_accuracy"] >= MAJORITY_VOTE_REFERENCE
    assert {lf["name"] for lf in own["lfs_on_test"]} >= {"keyword_subscribe", "short_comment"}


@pytest.fixture(scope="module")
def foundation():
    """The real CPU foundation model (~5 s per text on 77 labels: a small sample)."""
    from protege.foundation.transformers_backend import TransformersBackend
    from protege.settings import Settings

    return TransformersBackend.from_settings(Settings())


def test_banking77_rules_prompts_and_reviews_reported_per_source_and_combined(foundation):
    report = banking77_reference_report(
        prompt_sample=2, backend=foundation, train_limit=1500, label_model_epochs=5
    )
    assert report["examples"] == 1500 and report["reviewed"] == 150
    assert report["intents_with_rules"] >= 12
    sources = {s["source"]: s for s in report["sources"]}
    assert set(sources) == {"rule", "python", "prompt", "feedback"}
    assert (
        sources["feedback"]["coverage"] == pytest.approx(0.1)
        and sources["feedback"]["accuracy"] == 1.0
    )
    assert sources["rule"]["accuracy"] > 0.8 and sources["rule"]["coverage"] > 0.1
    assert 0 <= sources["prompt"]["coverage"] <= 2 / 1500  # votes only above its threshold
    assert report["prompt_scored"] == 2 and set(report["prompt_accuracy_on_sample"]) == {
        "prompt_intent",
        "prompt_support_topic",
    }
    combined = report["combined"]
    assert combined["coverage"] >= max(s["coverage"] for s in report["sources"])
    assert combined["accuracy"] > 0.7
    assert report["label_model"]["chosen"] in ("snorkel", "majority")
