"""The gate, the paired tests, the metrics it reads and the cascade calibration.

Acceptance: a candidate trained on shuffled labels is rejected against a good champion;
a good candidate passes against a weak one."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from protege import datasets
from protege.improver.judge.calibrate import calibrate_threshold
from protege.improver.judge.evaluate import evaluate_specialist, expected_calibration_error, score
from protege.improver.judge.gate import decide, mcnemar_exact_p, paired_bootstrap_p
from protege.improver.training import TrainingSet, tfidf
from protege.taskspec import GateSpec, TrainingSpec

LABELS = ["HAM", "SPAM"]


def correct(n_right: int, n: int) -> np.ndarray:
    return np.arange(n) < n_right


# ------------------------------------------------------------------ paired tests


@pytest.mark.parametrize("b,c", [(10, 2), (5, 5), (0, 3), (30, 12)])
def test_mcnemar_exact_is_a_one_sided_binomial_test_on_discordant_pairs(b, c):
    cand = np.array([True] * b + [False] * c + [True] * 50)
    champ = np.array([False] * b + [True] * c + [True] * 50)
    expected = binomtest(b, b + c, 0.5, alternative="greater").pvalue
    assert mcnemar_exact_p(cand, champ) == pytest.approx(expected)


def test_identical_models_are_never_significantly_better():
    same = correct(80, 100)
    assert mcnemar_exact_p(same, same) == 1.0
    assert paired_bootstrap_p(same, same) == 1.0


def test_paired_bootstrap_sees_a_clear_gain_and_no_gain():
    rng = np.random.default_rng(0)
    champ = rng.random(300) < 0.7
    better = champ | (rng.random(300) < 0.5)
    assert paired_bootstrap_p(better, champ) < 0.01
    assert paired_bootstrap_p(champ, better) > 0.9


# ------------------------------------------------------------------ metrics


def test_metrics_per_class_recall_macro_f1_and_ece():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    m = score(probs, ["HAM", "HAM", "SPAM", "SPAM"], LABELS)
    assert m.accuracy == 0.75
    assert m.per_class_recall == {"HAM": 1.0, "SPAM": 0.5}
    assert m.macro_f1 == pytest.approx((0.8 + 2 / 3) / 2)
    # bins: 0.9 (right), 0.8 (right), 0.7 (right), 0.6 (wrong)
    assert m.ece == pytest.approx((0.1 + 0.2 + 0.3 + 0.6) / 4)
    assert expected_calibration_error(np.array([[1.0, 0.0]]), np.array([0])) == 0.0


def test_fm_predictions_may_be_label_indices():
    m = score(np.array([0, 1, 1]), [0, 1, 0], LABELS)
    assert m.accuracy == pytest.approx(2 / 3)


# ------------------------------------------------------------------ the gate


def metrics_for(correct_mask: np.ndarray, gold: np.ndarray):
    """Metrics of a model that is right exactly where `correct_mask` says."""
    predicted = np.where(correct_mask, gold, 1 - gold)
    return score(predicted, gold, LABELS)


@pytest.fixture
def gold():
    return np.tile([0, 1], 100)


def test_a_clearly_better_candidate_passes(gold):
    champ_ok = correct(150, 200)
    cand_ok = correct(185, 200)
    decision = decide(
        GateSpec(min_gain=0.05),
        metrics_for(cand_ok, gold),
        cand_ok,
        metrics_for(champ_ok, gold),
        champ_ok,
    )
    assert decision.passed, decision.reasons
    assert decision.gain == pytest.approx(0.175)
    assert decision.p_value < 0.05


def test_below_the_floor_is_rejected_even_without_a_champion(gold):
    ok = correct(120, 200)
    decision = decide(GateSpec(min_accuracy=0.8), metrics_for(ok, gold), ok)
    assert not decision.passed
    assert "below the minimum" in decision.reasons[0]


def test_without_a_champion_only_the_floor_applies(gold):
    ok = correct(170, 200)
    decision = decide(GateSpec(min_accuracy=0.8, min_gain=0.5), metrics_for(ok, gold), ok)
    assert decision.passed and decision.gain is None


def test_a_gain_that_is_not_significant_is_rejected(gold):
    champ_ok = correct(160, 200)
    cand_ok = correct(163, 200)
    decision = decide(
        GateSpec(), metrics_for(cand_ok, gold), cand_ok, metrics_for(champ_ok, gold), champ_ok
    )
    assert not decision.passed
    assert any("not significant" in r for r in decision.reasons)


def test_a_gain_below_min_gain_is_rejected_under_either_test(gold):
    champ_ok = correct(150, 200)
    cand_ok = correct(170, 200)
    for test in ("mcnemar", "bootstrap"):
        decision = decide(
            GateSpec(min_gain=0.2, test=test),
            metrics_for(cand_ok, gold),
            cand_ok,
            metrics_for(champ_ok, gold),
            champ_ok,
        )
        assert not decision.passed
        assert any("below the required" in r for r in decision.reasons)
        assert decision.p_value < 0.05  # significant, but not by enough


def test_a_class_whose_recall_collapses_is_rejected(gold):
    """Better overall, but SPAM recall falls: the candidate only learned HAM better."""
    champ_ok = (gold == 0) & (np.arange(200) < 100) | (gold == 1)
    cand_ok = (gold == 0) | ((gold == 1) & (np.arange(200) < 160))
    decision = decide(
        GateSpec(max_class_drop=0.1),
        metrics_for(cand_ok, gold),
        cand_ok,
        metrics_for(champ_ok, gold),
        champ_ok,
    )
    assert decision.gain > 0
    assert not decision.passed
    assert any(r.startswith("recall of SPAM falls by 0.2") for r in decision.reasons)


# ------------------------------------------------------------------ acceptance on youtube


@pytest.fixture(scope="module")
def youtube_models(tmp_path_factory):
    """Folders of a good TF-IDF specialist (800 gold texts), one trained on the same texts
    with shuffled labels, and a weak one trained on 40; with the youtube test split."""
    rng = np.random.default_rng(0)
    train = datasets.youtube("train").subset(rng.permutation(1586)[:800])
    good = TrainingSet.from_gold(LABELS, train.texts, train.labels)
    shuffled = TrainingSet.from_gold(LABELS, train.texts, list(rng.permutation(train.labels)))
    few = rng.permutation(len(train))[:40]
    weak = TrainingSet.from_gold(
        LABELS, [train.texts[i] for i in few], [train.labels[i] for i in few]
    )
    root = tmp_path_factory.mktemp("gate")
    folders = {
        name: tfidf.train(data, TrainingSpec(), progress=False).write(
            root / name, task="youtube-spam", labels=LABELS, version=name
        )
        for name, data in (("good", good), ("shuffled", shuffled), ("weak", weak))
    }
    return folders, datasets.youtube("test")


def gate_on_test(folders, test, candidate: str, champion: str, spec: GateSpec):
    cand = evaluate_specialist(
        folders[candidate], test.texts, test.labels, LABELS, latency_samples=5
    )
    champ = evaluate_specialist(
        folders[champion], test.texts, test.labels, LABELS, latency_samples=5
    )
    return decide(
        spec, cand.metrics, cand.predicted == test.y, champ.metrics, champ.predicted == test.y
    )


def test_a_candidate_trained_on_shuffled_labels_is_rejected(youtube_models):
    folders, test = youtube_models
    decision = gate_on_test(folders, test, "shuffled", "good", GateSpec(min_accuracy=0.8))
    assert not decision.passed
    text = " ".join(decision.reasons)
    assert "below the minimum" in text and "not significant" in text
    assert decision.gain < -0.3


def test_a_good_candidate_passes_against_a_weak_champion(youtube_models):
    folders, test = youtube_models
    # The weak champion calls most comments SPAM, so its SPAM recall is high: the good
    # candidate gives some of it up (~0.11) for a +0.3 accuracy gain; allow that here.
    decision = gate_on_test(
        folders, test, "good", "weak", GateSpec(min_accuracy=0.8, min_gain=0.02, max_class_drop=0.2)
    )
    assert decision.passed, decision.reasons
    assert decision.p_value < 0.01 and decision.gain > 0.2


# ------------------------------------------------------------------ cascade calibration


def test_calibration_picks_the_lowest_threshold_that_reaches_the_target():
    rng = np.random.default_rng(0)
    n = 400
    gold = rng.integers(0, 2, n)
    confidence = rng.uniform(0.5, 1.0, n)
    # the specialist is right with probability = its confidence (calibrated)
    spec_right = rng.random(n) < confidence
    spec_pred = np.where(spec_right, gold, 1 - gold)
    spec_probs = np.zeros((n, 2))
    spec_probs[np.arange(n), spec_pred] = confidence
    spec_probs[np.arange(n), 1 - spec_pred] = 1 - confidence
    fm_pred = np.where(rng.random(n) < 0.85, gold, 1 - gold)  # the FM: 85 %
    result = calibrate_threshold(spec_probs, fm_pred, gold)
    assert result.met
    assert result.target == pytest.approx(np.mean(fm_pred == gold))
    assert result.cascade_accuracy >= result.target

    def cascade_accuracy(t):
        alone = confidence >= t
        return np.mean(np.where(alone, spec_pred == gold, fm_pred == gold))

    assert cascade_accuracy(result.threshold) == pytest.approx(result.cascade_accuracy)
    lower = confidence[confidence < result.threshold]
    assert all(cascade_accuracy(t) < result.target for t in np.unique(lower))
    assert result.specialist_share == pytest.approx(np.mean(confidence >= result.threshold))


def test_a_specialist_better_than_the_fm_answers_everything():
    gold = np.array([0, 1, 0, 1])
    spec = np.array([[0.9, 0.1], [0.4, 0.6], [0.6, 0.4], [0.45, 0.55]])
    result = calibrate_threshold(spec, np.array([1, 1, 1, 1]), gold)
    assert result.threshold == 0.0 and result.specialist_share == 1.0


def test_an_unreachable_target_leaves_the_fm_answering():
    gold = np.array([0, 1])
    spec = np.array([[0.2, 0.8], [0.9, 0.1]])  # always wrong
    result = calibrate_threshold(spec, np.array([0, 0]), gold, target=0.99)
    assert not result.met and result.threshold == 1.0
