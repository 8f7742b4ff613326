"""The deployment's foundation model over HTTP: a FoundationBackend for the improver,
which never loads a model of its own (on a cluster it runs on a CPU pod, and the
served model may need a GPU). It asks the gateway's `/v1/foundation/score` (role
`foundation`, see serving/foundation_api.py), sending prompt LF names, never templates:
the gateway resolves them from its own task specs, and both sides compare a digest of
the labels and prompt so that a tasks file that differs fails loudly instead of
caching another prompt's scores.

Scoring has no side effects, so a request that failed in transit, timed out or got a
503/429 is sent again (a few times, with backoff); a 4xx other than 429 is not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import httpx
import numpy as np

from protege.foundation.backend import Adapter
from protege.schemas import ModelRef
from protege.settings import Settings, secret_value
from protege.taskspec import PromptSpec, TaskSpec

log = logging.getLogger(__name__)

RETRIED_STATUS = frozenset({429, 502, 503, 504})
TIMEOUT_MARGIN_S = 10.0  # past the gateway's own deadline, so that its 503 arrives first
MAX_WAIT_S = 30.0  # the longest pause between attempts, whatever Retry-After says


class RemoteFoundationError(RuntimeError):
    """The gateway refused the question or could not answer it; the message says which."""


def scoring_digest(task: TaskSpec, prompt: PromptSpec | None) -> str:
    """Of what decides the FM's probabilities besides the model: the labels (names,
    words, descriptions, order) and the prompt (the task's own for None)."""
    material = json.dumps(
        {
            "labels": [label.model_dump(mode="json") for label in task.labels],
            "prompt": (prompt or task.prompt).model_dump(mode="json"),
        },
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def prompt_name(task: TaskSpec, prompt: PromptSpec | None) -> str | None:
    """The name the gateway knows `prompt` by: a prompt LF's, or None for the task's own."""
    if prompt is None:
        return None
    for spec in task.labeling.prompt_lfs:
        if spec.as_prompt() == prompt:
            return spec.name
    if prompt == task.prompt:
        return None
    raise ValueError(
        f"{task.name}: the deployment's FM scores only the task's prompt and its prompt "
        "LFs' (by name); this prompt is neither"
    )


def served_model_name(settings: Settings) -> str:
    """The deployment's FM name from the settings the improver shares with serving,
    without asking the FM: the score cache's key, so cached scores need no FM at all."""
    if settings.fm_model:
        if settings.fm_backend == "transformers":
            return Path(settings.fm_model).name
        return settings.fm_model
    from protege.foundation.smollm import MODEL_NAME

    return MODEL_NAME


def gateway_url(settings: Settings) -> str:
    """`fm_url`, or this machine's gateway."""
    if settings.fm_url:
        return settings.fm_url.rstrip("/")
    host = settings.http_host if settings.http_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return f"http://{host}:{settings.http_port}"


class RemoteFoundation:
    """FoundationBackend over the gateway's `/v1/foundation` routes.

    Parameters
    ----------
    url : the gateway, e.g. http://127.0.0.1:8000.
    key : an API key with the `foundation` role (None: the gateway has auth disabled).
    deadline_s : the gateway's deadline for one call; the client waits a margin longer.
    attempts : tries per call for transient failures (transport errors, 429, 502-504).
    """

    def __init__(
        self,
        url: str,
        key: str | None = None,
        deadline_s: float = 120.0,
        attempts: int = 3,
        backoff_s: float = 1.0,
    ):
        self.url = url.rstrip("/")
        self.attempts = attempts
        self.backoff_s = backoff_s
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(deadline_s + TIMEOUT_MARGIN_S, connect=5.0),
        )
        self._ref: ModelRef | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RemoteFoundation:
        return cls(
            gateway_url(settings), secret_value(settings.fm_key), settings.fm_score_deadline_s
        )

    @property
    def ref(self) -> ModelRef:
        """The served model, as its last answer named it (asked for when none came yet)."""
        if self._ref is None:
            self._ref = ModelRef.model_validate(self._call("GET", "/v1/foundation"))
        return self._ref

    def predict_proba(
        self,
        task: TaskSpec,
        texts: list[str],
        prompt: PromptSpec | None = None,
        adapter: Adapter | None = None,
    ) -> np.ndarray:
        """[N, C] probabilities in the task's label order, as the deployment's FM gives
        them; sent in batches of the task's `max_batch`."""
        name = prompt_name(task, prompt)
        digest = scoring_digest(task, prompt)
        rows: list[list[float]] = []
        step = task.limits.max_batch
        for start in range(0, len(texts), step):
            body = {
                "task": task.name,
                "texts": list(texts[start : start + step]),
                "prompt": name,
                "adapter": adapter.name if adapter else None,
            }
            answer = self._call("POST", "/v1/foundation/score", body)
            if answer.get("digest") != digest or answer.get("labels") != task.label_names:
                raise RemoteFoundationError(
                    f"{task.name}: the gateway at {self.url} asks the FM another question "
                    f"(prompt {name or 'of the task'!r}): its tasks file differs from this "
                    "process's labels or prompts; deploy the same tasks file to both"
                )
            self._ref = ModelRef.model_validate(answer["model"])
            rows += answer["probabilities"]
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), len(task.labels))

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        """The JSON answer; retries what is safe to retry, raises RemoteFoundationError."""
        problem = ""
        for attempt in range(1, self.attempts + 1):
            wait = self.backoff_s * 2 ** (attempt - 1)
            try:
                response = self._http.request(method, path, json=body)
            except httpx.TransportError as exc:  # refused, reset, timed out
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    return response.json()
                problem = f"{response.status_code} {detail_of(response)}"
                if response.status_code not in RETRIED_STATUS:
                    break
                wait = max(wait, retry_after(response))
            if attempt < self.attempts:
                log.warning("FM at %s%s: %s; again in %.1f s", self.url, path, problem, wait)
                time.sleep(min(wait, MAX_WAIT_S))
        raise RemoteFoundationError(f"the deployment's FM at {self.url}{path}: {problem}")

    def close(self) -> None:
        self._http.close()


def detail_of(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    hint = (
        " (PROTEGE_FM_KEY: a key with the foundation role)"
        if response.status_code in (401, 403)
        else ""
    )
    return str(detail)[:500] + hint


def retry_after(response: httpx.Response) -> float:
    try:
        return float(response.headers.get("retry-after", 0))
    except ValueError:
        return 0.0
