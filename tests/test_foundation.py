"""The foundation-model backends without Ray: prompts, label scoring, the real
SmolLM2 through transformers, and the OpenAI-compatible path against a real
server on loopback with the same model behind it."""

import threading
import time

import numpy as np
import pytest
import torch
import uvicorn

from protege.events.broker import free_port
from protege.foundation.backend import create_backend
from protege.foundation.openai_backend import OpenAIBackend
from protege.foundation.prompts import continuations, render_prompt
from protege.foundation.scoring import label_probabilities
from protege.foundation.server import build_fm_server
from protege.foundation.transformers_backend import TransformersBackend
from protege.settings import Settings
from protege.taskspec import PromptSpec


@pytest.fixture(scope="module")
def tasks():
    return Settings().load_tasks()


@pytest.fixture(scope="module")
def intents(tasks):
    """Six banking77 intents (one- to many-token names): cheap, same prompt machinery."""
    task = tasks["banking77"]
    return task.model_copy(update={"labels": [task.labels[i] for i in (0, 9, 15, 40, 60, 76)]})


@pytest.fixture(scope="module")
def backend() -> TransformersBackend:
    return TransformersBackend.from_settings(Settings())


def naive_loglik(backend: TransformersBackend, prefix: str, continuation: str) -> float:
    """Score prefix+continuation in one plain forward pass, no cache, no padding."""
    tok = backend.tokenizer
    ids = tok(prefix, add_special_tokens=False)["input_ids"]
    cont = tok(continuation, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logp = torch.log_softmax(backend.model(torch.tensor([ids + cont])).logits[0], -1)
    return sum(float(logp[len(ids) - 1 + k, cont[k]]) for k in range(len(cont)))


def test_prompt_names_every_label_and_ends_before_the_label_words(tasks):
    task = tasks["youtube-spam"]
    prompt = render_prompt(task, "nice   song\n")
    assert "- spam: Self-promotion" in prompt and "- ham: A genuine" in prompt
    assert prompt.endswith("Comment: nice song\nAnswer:")
    assert continuations(task) == [" ham", " spam"]


def test_few_shot_examples_are_rendered_like_the_question(tasks):
    task = tasks["youtube-spam"]
    prompt = PromptSpec(template=task.prompt.template, examples=[("sub to me", "SPAM")])
    assert "Comment: sub to me\nAnswer: spam\n\nComment: hi\nAnswer:" in render_prompt(
        task, "hi", prompt
    )


def test_length_normalization_divides_by_token_count():
    loglik = np.array([[-2.0, -6.0]])
    summed = label_probabilities(loglik, np.array([1, 3]), length_normalize=False)
    mean = label_probabilities(loglik, np.array([1, 3]), length_normalize=True)
    assert summed[0, 0] > 0.98
    np.testing.assert_allclose(mean[0], [0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(summed.sum(1), 1.0, atol=1e-6)


@pytest.fixture(scope="module")
def mixed(intents):
    """Intents, one of them renamed to a single token: one- and many-token labels."""
    labels = [intents.labels[0].model_copy(update={"verbalizer": "refund"}), *intents.labels[1:]]
    return intents.model_copy(update={"labels": labels})


@pytest.mark.parametrize("task_name", ["youtube-spam", "intents", "mixed"])
def test_label_scoring_equals_plain_forward_passes(backend, tasks, intents, mixed, task_name):
    task = {"intents": intents, "mixed": mixed}.get(task_name) or tasks[task_name]
    texts = [
        "I am still waiting on my card?",
        "why was I charged a fee for topping up with my card",
        "Subscribe to my channel http://x.co",
    ]
    labels = continuations(task)
    label_ids = [backend.tokenizer(c, add_special_tokens=False)["input_ids"] for c in labels]
    counts = np.array([len(ids) for ids in label_ids])
    if task_name == "mixed":
        assert sorted(counts)[:2] == [1, 2]
    naive = np.array(
        [[naive_loglik(backend, render_prompt(task, t), c) for c in labels] for t in texts]
    )
    batched = backend.label_loglik([render_prompt(task, t) for t in texts], label_ids)
    np.testing.assert_allclose(batched, naive, atol=1e-4)
    for length_normalize in (False, True):
        prompt = task.prompt.model_copy(update={"length_normalize": length_normalize})
        np.testing.assert_allclose(
            backend.predict_proba(task, texts, prompt),
            label_probabilities(naive, counts, length_normalize),
            atol=1e-5,
        )


def test_one_token_labels_cost_one_forward_pass_and_longer_ones_two(backend, tasks, intents):
    calls = []
    hook = backend.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        backend.predict_proba(tasks["youtube-spam"], ["wow", "nice song", "sub to me"])
        assert len(calls) == 1  # ham and spam are whole in the next-token distribution
        calls.clear()
        backend.predict_proba(intents, ["My card has not arrived", "top up failed"])
        assert len(calls) == 2  # the prompt, then every label's other tokens packed
    finally:
        hook.remove()


def test_batched_texts_of_different_lengths_score_as_if_alone(backend, tasks):
    task = tasks["youtube-spam"]
    texts = [
        "wow",
        "Check out my new music video and subscribe to my channel for more!!! http://x.co",
    ]
    together = backend.predict_proba(task, texts)
    alone = np.concatenate([backend.predict_proba(task, [t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-4)
    np.testing.assert_allclose(together.sum(1), 1.0, atol=1e-5)


def test_label_passes_do_not_change_scores(backend, intents, monkeypatch):
    task = intents
    text = ["how do I top up by bank transfer"]
    full = backend.predict_proba(task, text)
    import protege.foundation.transformers_backend as tb

    monkeypatch.setattr(tb, "LABEL_TOKENS_PER_PASS", 1)  # one label per pass
    np.testing.assert_allclose(backend.predict_proba(task, text), full, atol=1e-5)


def serve_on_loopback(app):
    """Run an ASGI app on a free loopback port in a thread; yields its /v1 URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def fm_server_url(backend):
    yield from serve_on_loopback(build_fm_server(backend, "smollm2"))


@pytest.fixture(scope="module")
def vllm_style_url(backend):
    """The same model, reporting a BOS token and offsets the way vLLM does."""
    yield from serve_on_loopback(build_fm_server(backend, "smollm2", vllm_offsets=True))


def test_openai_backend_scores_like_the_model_behind_the_endpoint(fm_server_url, backend, tasks):
    task = tasks["youtube-spam"]
    texts = ["Please subscribe to my channel!", "This song brings back memories"]
    remote = OpenAIBackend(fm_server_url, "smollm2", api_key="unused").predict_proba(task, texts)
    np.testing.assert_allclose(remote, backend.predict_proba(task, texts), atol=1e-5)


def test_openai_backend_length_normalizes_multi_token_labels(fm_server_url, backend, intents):
    task = intents
    assert task.prompt.length_normalize
    texts = ["My card still has not arrived"]
    remote = OpenAIBackend(fm_server_url, "smollm2", api_key=None).predict_proba(task, texts)
    np.testing.assert_allclose(remote, backend.predict_proba(task, texts), atol=1e-5)


def test_vllm_style_server_shifts_offsets_by_the_bos_text(vllm_style_url, backend):
    import httpx

    body = {"model": "smollm2", "prompt": "Answer: spam", "max_tokens": 0, "echo": True}
    logprobs = httpx.post(f"{vllm_style_url}/completions", json={**body, "logprobs": 0}).json()[
        "choices"
    ][0]["logprobs"]
    bos = backend.tokenizer.bos_token
    assert logprobs["tokens"][0] == bos and logprobs["token_logprobs"][0] is None
    assert logprobs["tokens"][-1] == " spam"
    assert logprobs["text_offset"][-1] == len(bos) + len("Answer:")  # not 7: shifted


@pytest.mark.parametrize("length_normalize", [False, True])
@pytest.mark.parametrize("task_name", ["youtube-spam", "intents"])
def test_openai_backend_scores_like_the_model_under_vllm_offsets(
    vllm_style_url, backend, tasks, intents, task_name, length_normalize
):
    task = intents if task_name == "intents" else tasks[task_name]
    prompt = task.prompt.model_copy(update={"length_normalize": length_normalize})
    texts = {
        "youtube-spam": ["Please subscribe to my channel!", "wow", "I love this song <3"],
        "intents": ["My card still has not arrived", "how do I top up by bank transfer"],
    }[task_name]
    remote = OpenAIBackend(vllm_style_url, "smollm2", api_key=None).predict_proba(
        task, texts, prompt
    )
    np.testing.assert_allclose(remote, backend.predict_proba(task, texts, prompt), atol=1e-5)


def test_fm_server_refuses_generation_and_unknown_models(fm_server_url):
    import httpx

    generate = httpx.post(
        f"{fm_server_url}/completions", json={"model": "smollm2", "prompt": "hi", "max_tokens": 5}
    )
    assert generate.status_code == 400 and "echo=true" in generate.json()["detail"]
    other = httpx.post(
        f"{fm_server_url}/completions",
        json={"model": "gpt-x", "prompt": "hi", "max_tokens": 0, "echo": True},
    )
    assert other.status_code == 404


def test_backend_choice_is_configuration():
    assert isinstance(create_backend(Settings()), TransformersBackend)
    with pytest.raises(ValueError, match="PROTEGE_OPENAI_BASE_URL"):
        create_backend(Settings(fm_backend="openai"))
    with pytest.raises(ValueError, match="PROTEGE_FM_MODEL"):
        create_backend(Settings(fm_backend="vllm"))
    with pytest.raises(RuntimeError, match="protege\\[gpu\\]"):
        create_backend(Settings(fm_backend="vllm", fm_model="some/model"))
