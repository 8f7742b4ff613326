"""The Ray Serve application builder: `serve run protege.serving.app:build_app`, the
Helm chart's serveConfigV2 and `protege up` all start the app through here.

Secrets never travel as arguments: Serve keeps an app's arguments in its config (and
shows them). The deployments get the non-secret `args` and build their `Settings` in
their own process, where the secrets come from that process's environment (a pod's
Secret-backed variables; on one machine, the environment Ray was started with)."""

from __future__ import annotations

from ray.serve import Application
from ray.serve.config import BackpressureConfig

from protege.serving.deployments import FoundationModel, Gateway
from protege.settings import ENV_ONLY_FIELDS, Settings


def build_app(args: dict | None = None) -> Application:
    """`args` override settings (same names as the PROTEGE_* variables, lower case);
    secrets (`ENV_ONLY_FIELDS`) are refused there."""
    args = dict(args or {})
    given = sorted(ENV_ONLY_FIELDS & set(args))
    if given:
        raise ValueError(
            f"{given} must come from each replica's environment (PROTEGE_*), not from the "
            "app's arguments, which Ray Serve keeps in its config"
        )
    settings = Settings(**args)
    settings.load_tasks()  # fail here, in the driver, on a bad tasks file
    foundation = FoundationModel.options(
        ray_actor_options={"num_gpus": settings.fm_num_gpus, "num_cpus": 1},
    ).bind(args)
    return Gateway.options(
        max_ongoing_requests=settings.max_ongoing_requests,
        max_queued_requests=settings.max_queued_requests,
        backpressure_config=BackpressureConfig(retry_after_s=settings.retry_after_s),
    ).bind(args, foundation)
