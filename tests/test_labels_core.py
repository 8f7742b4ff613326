"""Labeling functions, rules, feedback votes, the label model: the parts that need
no Kafka and no database."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from protege.improver.labeling import (
    ABSTAIN,
    DataPoint,
    LabelingFunction,
    Review,
    apply_lfs,
    labeling_function,
)
from protege.improver.labeling.feedback import feedback_lfs, rejected_labels
from protege.improver.labeling.label_model import (
    exclude_labels,
    fit_label_model,
    majority_proba,
    to_labels,
)
from protege.improver.labeling.models import model_lfs
from protege.improver.labeling.rules import RuleLF, rule_lfs
from protege.improver.labeling.sources import lfs_from_modules, task_lfs
from protege.taskspec import DEFAULT_TASKS_FILE, LabelModelSpec, RuleSpec, load_tasks

TASKS = load_tasks(DEFAULT_TASKS_FILE)
YOUTUBE, BANKING = TASKS["youtube-spam"], TASKS["banking77"]


@labeling_function(task="youtube-spam", name="asks_to_subscribe")
def asks_to_subscribe(x):
    """Spam asks viewers to subscribe to another channel."""
    return "SPAM" if "subscribe" in x.text.lower() else None


@labeling_function
def explodes_on_question(x):
    if "?" in x.text:
        raise RuntimeError("boom")
    return "HAM"


def test_decorator_builds_a_named_lf_that_votes_or_abstains():
    assert isinstance(asks_to_subscribe, LabelingFunction)
    assert asks_to_subscribe.name == "asks_to_subscribe"
    assert asks_to_subscribe.description.startswith("Spam asks")
    matrix = apply_lfs(
        [asks_to_subscribe],
        ["HAM", "SPAM"],
        [DataPoint("Subscribe to me!"), DataPoint("great song")],
    )
    assert matrix.L.tolist() == [[1], [ABSTAIN]]


def test_an_lf_that_raises_abstains_is_counted_and_logged_and_the_run_goes_on(caplog):
    lf = LabelingFunction("explodes", explodes_on_question)
    points = [DataPoint("fine"), DataPoint("why?"), DataPoint("really?"), DataPoint("ok")]
    with caplog.at_level(logging.WARNING, logger="protege.improver.labeling.functions"):
        matrix = apply_lfs([lf, asks_to_subscribe], ["HAM", "SPAM"], points)
    assert matrix.L[:, 0].tolist() == [0, ABSTAIN, ABSTAIN, 0]
    assert matrix.errors == {"explodes": 2, "asks_to_subscribe": 0}
    assert lf.errors == 2
    assert "LF explodes raised" in caplog.text and "RuntimeError: boom" in caplog.text


def test_a_non_fault_tolerant_lf_propagates():
    lf = LabelingFunction("strict", explodes_on_question, fault_tolerant=False)
    with pytest.raises(RuntimeError, match="boom"):
        apply_lfs([lf], ["HAM", "SPAM"], [DataPoint("why?")])


def test_a_vote_for_a_label_the_task_lacks_is_an_error_and_an_abstain():
    lf = LabelingFunction("typo", lambda x: "SPAMM")
    matrix = apply_lfs([lf], ["HAM", "SPAM"], [DataPoint("a"), DataPoint("b")])
    assert matrix.L[:, 0].tolist() == [ABSTAIN, ABSTAIN]
    assert matrix.errors["typo"] == 2


def test_duplicate_lf_names_are_refused():
    with pytest.raises(ValueError, match="duplicate labeling function names"):
        apply_lfs([asks_to_subscribe, asks_to_subscribe], ["HAM", "SPAM"], [DataPoint("x")])


def test_keyword_rules_match_whole_words_and_phrases_in_any_case():
    lf = RuleLF(RuleSpec(name="topup", label="automatic_top_up", keywords=["auto top up", "sub"]))
    assert lf(DataPoint("How do I set up AUTO  top up?")) == "automatic_top_up"
    assert lf(DataPoint("sub 4 sub")) == "automatic_top_up"
    assert lf(DataPoint("subscribe")) is None
    assert lf(DataPoint("autotop up")) is None


def test_regex_rule_votes_its_label():
    lf = RuleLF(RuleSpec(name="link", label="SPAM", regex=r"https?://"))
    assert lf(DataPoint("see http://x.io")) == "SPAM" and lf(DataPoint("no link")) is None


def test_rule_needs_exactly_one_matcher_and_a_valid_regex():
    with pytest.raises(ValueError, match="exactly one"):
        RuleSpec(name="r", label="A")
    with pytest.raises(ValueError, match="bad regex"):
        RuleSpec(name="r", label="A", regex="(")


def _tasks_file_with(tmp_path: Path, rule: dict) -> Path:
    raw = yaml.safe_load(DEFAULT_TASKS_FILE.read_text())
    raw["tasks"][0].setdefault("labeling", {}).setdefault("rules", []).append(rule)
    path = tmp_path / "tasks.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_rule_naming_an_unknown_label_is_rejected_at_load_naming_it(tmp_path):
    path = _tasks_file_with(tmp_path, {"name": "typo_rule", "label": "SPAMM", "keywords": ["x"]})
    with pytest.raises(ValueError) as info:
        load_tasks(path)
    message = str(info.value)
    assert "'SPAMM'" in message and "typo_rule" in message and "youtube-spam" in message


def test_duplicate_lf_names_in_config_are_rejected(tmp_path):
    path = _tasks_file_with(tmp_path, {"name": "keyword_my", "label": "SPAM", "keywords": ["x"]})
    with pytest.raises(ValueError, match="duplicate labeling function names"):
        load_tasks(path)


def test_shipped_tasks_have_rules_for_at_least_a_dozen_banking_intents():
    assert len({r.label for r in BANKING.labeling.rules}) >= 12
    assert BANKING.labeling.prompt_lfs and YOUTUBE.labeling.prompt_lfs
    assert len(rule_lfs(YOUTUBE)) == 6


def test_python_lf_modules_named_by_the_config_are_imported():
    names = {lf.name for lf in lfs_from_modules(YOUTUBE.labeling.python_modules, YOUTUBE.name)}
    assert names == {"short_comment", "has_person", "very_positive", "subjective"}
    with pytest.raises(ValueError, match="no_such_module"):
        lfs_from_modules(["protege.tasks.no_such_module"], "x")


def test_task_lfs_gathers_every_source_in_order():
    lfs = task_lfs(YOUTUBE, backend=object())
    sources = [lf.source for lf in lfs]
    assert sources == sorted(sources, key=["rule", "python", "prompt", "feedback", "model"].index)
    assert {"rule", "python", "prompt", "feedback", "model"} == set(sources)
    assert "specialist_model" not in {lf.name for lf in lfs}  # off by default, see model_lfs


def _review(verdict, predicted, label=None, who="ann", t=0.0):
    return Review(who, verdict, predicted, label, t)


def test_feedback_votes_confirmations_corrections_and_binary_rejections():
    lfs = {lf.name: lf for lf in feedback_lfs(YOUTUBE)}
    up = DataPoint("a", reviews=(_review("up", "SPAM"),))
    fixed = DataPoint("b", reviews=(_review("down", "HAM", "SPAM"),))
    down = DataPoint("c", reviews=(_review("down", "HAM"),))
    split = DataPoint("d", reviews=(_review("up", "HAM"), _review("down", "HAM", who="bob")))
    assert [lfs["reviewer_confirmed"](x) for x in (up, fixed, down, split)] == [
        "SPAM",
        None,
        None,
        None,
    ]
    assert [lfs["reviewer_correction"](x) for x in (up, fixed, down, split)] == [
        None,
        "SPAM",
        None,
        None,
    ]
    assert [lfs["reviewer_rejected"](x) for x in (up, fixed, down, split)] == [
        None,
        None,
        "SPAM",
        None,
    ]


def test_multiclass_thumbs_down_rules_the_served_label_out():
    assert "reviewer_rejected" not in {lf.name for lf in feedback_lfs(BANKING)}
    points = [DataPoint("x", reviews=(_review("down", "card_arrival"),)), DataPoint("y")]
    assert rejected_labels(BANKING, points) == [{BANKING.label_index("card_arrival")}, set()]
    probs, valid = exclude_labels(np.array([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]]), [{0}, {0}])
    assert probs[0].tolist() == [0.0, 0.5, 0.5] and valid.tolist() == [True, False]


def test_model_votes_come_from_the_prediction_event():
    (fm,) = model_lfs(YOUTUBE)
    assert fm.name == "foundation_model"
    assert fm(DataPoint("x", foundation_label="HAM")) == "HAM" and fm(DataPoint("x")) is None


def test_majority_vote_and_tie_break_are_deterministic():
    L = np.array([[1, 1, -1], [0, 1, -1], [-1, -1, -1]])
    probs = majority_proba(L, 2)
    assert probs.tolist() == [[0.0, 1.0], [0.5, 0.5], [0.5, 0.5]]
    labels = to_labels(probs, (L != -1).any(axis=1), seed=3)
    assert (
        labels[0] == 1
        and labels[2] == -1
        and labels.tolist() == to_labels(probs, (L != -1).any(axis=1), seed=3).tolist()
    )


def _synthetic(n=600, m=6, c=3, seed=0, accuracies=None):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    accuracies = accuracies or [0.9, 0.85, 0.8, 0.6, 0.55, 0.5][:m]
    L = np.full((n, m), -1)
    for j, acc in enumerate(accuracies):
        votes = rng.random(n) < 0.5
        wrong = (y + rng.integers(1, c, n)) % c
        L[votes, j] = np.where(rng.random(n) < acc, y, wrong)[votes]
    return L, y


def test_auto_label_model_picks_the_better_on_gold_and_records_why():
    L, y = _synthetic()
    fit = fit_label_model(L, 3, LabelModelSpec(epochs=100), gold_L=L[:200], gold_y=y[:200])
    choice = fit.choice
    assert choice["chosen"] in ("snorkel", "majority")
    assert set(choice["gold_accuracy"]) == {"snorkel", "majority"}
    best = max(choice["gold_accuracy"], key=lambda k: (choice["gold_accuracy"][k], k == "majority"))
    assert choice["chosen"] == best and "better on" in choice["reason"]
    assert fit.probs.shape == (600, 3) and np.allclose(fit.probs[fit.covered].sum(axis=1), 1)


def test_without_gold_the_default_is_snorkel_and_majority_below_three_lfs():
    L, _ = _synthetic()
    assert fit_label_model(L, 3, LabelModelSpec(epochs=20)).kind == "snorkel"
    two = fit_label_model(L[:, :2], 3, LabelModelSpec(epochs=20))
    assert two.kind == "majority" and "< 3 LFs" in two.choice["reason"]
    forced = fit_label_model(L[:, :2], 3, kind="snorkel")
    assert forced.kind == "majority"


def test_snorkel_label_model_handles_many_classes():
    L, y = _synthetic(n=400, m=5, c=77, seed=1)
    fit = fit_label_model(L, 77, LabelModelSpec(epochs=10), kind="snorkel")
    labels = fit.labels()
    assert fit.probs.shape == (400, 77)
    assert (labels[fit.covered] == y[fit.covered]).mean() > 0.5
