"""API keys from the environment or a secret file, the loud no-auth mode, and the
specialist's micro-batcher."""

import asyncio
import json
import logging
import threading

import numpy as np
import pytest

from protege.serving.auth import ApiKeys, Identity, key_digest, parse_key_list
from protege.serving.batching import MicroBatcher
from protege.settings import Settings


def roles(keys: ApiKeys, key: str) -> frozenset[str]:
    identity = keys.identify(key)
    return identity.roles if identity else frozenset()


def test_keys_from_the_environment_and_a_secret_file(tmp_path):
    secret = tmp_path / "keys.json"
    secret.write_text(json.dumps({"file-key": ["feedback"], "ops-key": "admin"}))
    keys = ApiKeys.from_settings(
        Settings(api_keys="env-key=predict, feedback", api_keys_file=secret)
    )
    assert roles(keys, "env-key") == {"predict", "feedback"}
    assert roles(keys, "file-key") == {"feedback"}
    assert roles(keys, "ops-key") == {"predict", "feedback", "trusted", "foundation", "admin"}
    assert roles(keys, "env-key ") == frozenset() and roles(keys, "") == frozenset()


def test_each_key_is_an_identity_with_a_name(tmp_path):
    secret = tmp_path / "keys.yaml"
    secret.write_text(
        "keys:\n"
        "  - {name: bea, sha256: " + key_digest("bea-key") + ", roles: [trusted]}\n"
        "  - {name: ops, key: ops-key, roles: admin}\n"
    )
    keys = ApiKeys.from_settings(
        Settings(api_keys="ana:ana-key=feedback;k=predict", api_keys_file=secret)
    )
    ana, bea, anonymous = keys.identify("ana-key"), keys.identify("bea-key"), keys.identify("k")
    assert ana == Identity("ana", frozenset({"feedback"})) and not ana.trusted
    assert bea.name == "bea" and bea.trusted and bea.has("feedback") and not bea.has("admin")
    assert keys.identify("ops-key").name == "ops"
    assert anonymous.name == "key-" + key_digest("k")[:8]


def test_two_keys_cannot_share_a_name():
    with pytest.raises(ValueError, match="unique"):
        ApiKeys.from_settings(Settings(api_keys="ana:k1=feedback;ana:k2=predict"))


def test_yaml_secret_file(tmp_path):
    secret = tmp_path / "keys.yaml"
    secret.write_text("k1: [predict]\nk2: [predict, feedback]\n")
    assert roles(ApiKeys.from_settings(Settings(api_keys_file=secret)), "k2") == {
        "predict",
        "feedback",
    }


@pytest.mark.parametrize("bad", ["no-equals-sign", "=predict", ":k=predict"])
def test_malformed_key_list_is_rejected(bad):
    with pytest.raises(ValueError, match="KEY=role"):
        parse_key_list(bad)


def test_unknown_role_is_rejected():
    with pytest.raises(ValueError, match="unknown roles"):
        parse_key_list("k=superuser")


def test_disabling_auth_says_so_loudly(caplog):
    with caplog.at_level(logging.WARNING):
        keys = ApiKeys.from_settings(Settings(auth_disabled=True, api_keys="k=predict"))
    assert keys.disabled and "AUTH IS DISABLED" in caplog.text


def test_concurrent_calls_share_one_model_call():
    calls: list[int] = []
    lock = threading.Lock()

    def model(texts: list[str]) -> np.ndarray:
        with lock:
            calls.append(len(texts))
        return np.array([[len(t), 0.0] for t in texts])

    async def main():
        batcher = MicroBatcher(model, max_batch=64, wait_s=0.01)
        results = await asyncio.gather(*(batcher(["x" * n] * 2) for n in range(1, 11)))
        return results

    results = asyncio.run(main())
    assert calls == [20]  # ten requests, one call
    for n, result in enumerate(results, start=1):
        np.testing.assert_array_equal(result[:, 0], [n, n])  # each caller gets its own rows


def test_a_full_batch_runs_without_waiting_and_errors_reach_every_caller():
    def failing(texts):
        raise RuntimeError("model down")

    async def main():
        batcher = MicroBatcher(failing, max_batch=4, wait_s=60.0)  # only a full batch can run
        return await asyncio.wait_for(
            asyncio.gather(batcher(["a", "b"]), batcher(["c", "d"]), return_exceptions=True), 5
        )

    results = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) for r in results)
