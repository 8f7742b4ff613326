"""The Ray Serve application builder: `serve run protege.serving.app:build_app`, the
Helm chart's serveConfigV2 and `protege up` all start the app through here."""

from __future__ import annotations

from ray.serve import Application

from protege.serving.deployments import FoundationModel, Gateway
from protege.settings import Settings


def build_app(args: dict | None = None) -> Application:
    """`args` override settings (same names as the PROTEGE_* variables, lower case)."""
    settings = Settings(**(args or {}))
    settings.load_tasks()  # fail here, in the driver, on a bad tasks file
    foundation = FoundationModel.options(
        ray_actor_options={"num_gpus": settings.fm_num_gpus, "num_cpus": 1},
    ).bind(settings)
    return Gateway.bind(settings, foundation)
