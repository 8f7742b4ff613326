"""Routing policies, without Ray: which model answers, when the cascade escalates,
which answers are shadowed."""

import asyncio

import numpy as np
import pytest

from protege.schemas import AdapterRef, ModelRef, Route
from protege.serving.router import FoundationUnavailable, Router, escalates, in_shadow_sample
from protege.taskspec import Policy, RoutingSpec, TaskSpec

SPECIALIST = ModelRef(model="tfidf-lr", version="3")
FOUNDATION = ModelRef(model="smollm2", version="local")


def make_task(policy: Policy, threshold: float = 0.8, shadow_rate: float = 0.0) -> TaskSpec:
    return TaskSpec(
        name="t",
        labels=[{"name": "A", "description": "a"}, {"name": "B", "description": "b"}],
        routing=RoutingSpec(policy=policy, threshold=threshold, shadow_rate=shadow_rate),
    )


class Recorder:
    """Two tiny models with known outputs: the specialist's confidence is read from
    the text ('0.95' -> 95 % on A); the FM always says B."""

    def __init__(self, fm_delay_s: float = 0.0):
        self.fm_calls: list[list[str]] = []
        self.fm_adapters: list[str | None] = []
        self.fm_delay_s = fm_delay_s

    async def specialist(self, task, texts):
        return np.array([[float(t), 1 - float(t)] for t in texts])

    async def foundation(self, task, texts, adapter=None):
        self.fm_calls.append(list(texts))
        self.fm_adapters.append(adapter)
        await asyncio.sleep(self.fm_delay_s)
        return np.array([[0.1, 0.9]] * len(texts))


def route(task, texts, with_specialist=True, adapter=None, fm_delay_s=0.0, deadline_s=None):
    models = Recorder(fm_delay_s)
    router = Router(models.foundation, lambda: FOUNDATION, deadline_s)
    specialist = (
        (SPECIALIST, models.specialist, task.routing.threshold) if with_specialist else None
    )
    ids = [f"t.{i}.sig" for i in range(len(texts))]
    return asyncio.run(router.route(task, texts, ids, specialist, adapter)), models


def test_cascade_answers_confident_texts_and_escalates_the_rest():
    answers, models = route(
        make_task(Policy.cascade, threshold=0.8), ["0.95", "0.6", "0.85", "0.3"]
    )
    # 0.3 on A is 0.7 on B: still below 0.8, so it escalates too.
    assert [a.route for a in answers] == [
        Route.specialist,
        Route.escalated,
        Route.specialist,
        Route.escalated,
    ]
    assert models.fm_calls == [["0.6", "0.3"]]  # escalations go to the FM as one batch


def test_cascade_confidence_is_the_top_probability_of_any_label():
    answers, models = route(make_task(Policy.cascade, threshold=0.8), ["0.1"])  # 90 % on B
    assert answers[0].route is Route.specialist and models.fm_calls == []


def test_escalated_answer_comes_from_the_foundation_model_and_keeps_both_outputs():
    answers, _ = route(make_task(Policy.cascade, threshold=0.8), ["0.6"])
    answer = answers[0]
    assert answer.answer.model == FOUNDATION
    assert answer.specialist.model == SPECIALIST and answer.foundation.model == FOUNDATION
    np.testing.assert_allclose(answer.answer.probabilities, [0.1, 0.9])


def test_specialist_only_never_calls_the_foundation_model():
    answers, models = route(make_task(Policy.specialist_only), ["0.55", "0.51"])
    assert all(a.route is Route.specialist for a in answers) and models.fm_calls == []


def test_foundation_only_ignores_the_specialist():
    answers, models = route(make_task(Policy.foundation_only), ["0.99"])
    assert answers[0].route is Route.foundation and models.fm_calls == [["0.99"]]


@pytest.mark.parametrize("policy", list(Policy))
def test_without_a_specialist_every_policy_uses_the_foundation_model(policy):
    answers, models = route(make_task(policy), ["0.99", "0.2"], with_specialist=False)
    assert [a.route for a in answers] == [Route.foundation] * 2 and len(models.fm_calls) == 1


def test_escalation_threshold_is_strict_below():
    assert escalates(Policy.cascade, 0.79, 0.8) and not escalates(Policy.cascade, 0.8, 0.8)
    assert not escalates(Policy.specialist_only, 0.1, 0.8)


def test_shadow_sample_is_stable_and_close_to_its_rate():
    ids = [f"t.{i:06d}.sig" for i in range(20000)]
    picked = [in_shadow_sample(i, 0.1) for i in ids]
    assert picked == [in_shadow_sample(i, 0.1) for i in ids]
    assert 0.09 < sum(picked) / len(ids) < 0.11
    assert not any(in_shadow_sample(i, 0.0) for i in ids[:100])
    assert all(in_shadow_sample(i, 1.0) for i in ids[:100])


def test_only_specialist_answers_are_shadowed():
    answers, _ = route(make_task(Policy.cascade, threshold=0.8, shadow_rate=1.0), ["0.95", "0.6"])
    assert [a.shadow for a in answers] == [True, False]


ADAPTER = AdapterRef(name="t@v4", version="4", base_model="smollm2")


@pytest.mark.parametrize("with_specialist", [True, False])
def test_a_tasks_adapter_takes_every_fm_call_and_answers_as_itself(with_specialist):
    answers, models = route(
        make_task(Policy.cascade, threshold=0.8), ["0.95", "0.6"], with_specialist, ADAPTER
    )
    assert models.fm_adapters == ["t@v4"]
    fm_answers = [a for a in answers if a.route is not Route.specialist]
    assert fm_answers and all(
        a.answer.model == a.foundation.model == ModelRef(model="t@v4", version="4")
        for a in fm_answers
    )


def test_the_fm_deadline_holds_for_an_adapter_too():
    answers, _ = route(
        make_task(Policy.cascade, threshold=0.8),
        ["0.6"],
        adapter=ADAPTER,
        fm_delay_s=5.0,
        deadline_s=0.1,
    )
    assert answers[0].degraded and answers[0].answer.model == SPECIALIST
    with pytest.raises(FoundationUnavailable):
        route(
            make_task(Policy.foundation_only),
            ["0.6"],
            adapter=ADAPTER,
            fm_delay_s=5.0,
            deadline_s=0.1,
        )
