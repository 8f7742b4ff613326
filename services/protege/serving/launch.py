"""Start the Serve app on a local Ray (for `protege up`, the demo and the tests)."""

from __future__ import annotations

import logging
import os
import time

import httpx

from protege.settings import ENV_ONLY_FIELDS, ENV_PREFIX, Settings, public_args, secret_env

log = logging.getLogger(__name__)

# PROTEGE_* secrets start_serve put into this process's environment, with the values they
# replaced (None: unset), so that stop_serve gives the process its environment back.
_exported: dict[str, str | None] = {}

# Measured on 2-core machines with a trivial handler: direct ingress + HA proxy + gRPC
# between replicas cut a request's Serve overhead from ~14 ms to ~1.3 ms.
FAST_INGRESS_ENV = {
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
}


def start_serve(
    settings: Settings,
    app_name: str = "protege",
    fast_ingress: bool = False,
    metrics_port: int | None = None,
):
    """Start Ray (local) and the app; returns the gateway's base URL once it is ready.
    Prometheus metrics (Serve's and Protégé's) are on `metrics_port` when given."""
    import ray
    from ray import serve

    from protege.serving.app import build_app

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    for name in FAST_INGRESS_ENV:  # an earlier fast start in this process must not leak
        os.environ.pop(name, None)
    if fast_ingress:
        os.environ.update(FAST_INGRESS_ENV)
        # HAProxy's stats and metrics ports are fixed by default: two apps would collide.
        from protege.events.broker import free_port

        os.environ["RAY_SERVE_HAPROXY_STATS_PORT"] = str(free_port())
        os.environ["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(free_port())
    if not ray.is_initialized():
        export_secrets(settings)
        start_ray(settings, metrics_port)
    else:
        check_secrets_match(settings)
    serve.start(http_options={"host": settings.http_host, "port": settings.http_port})
    serve.run(build_app(public_args(settings)), name=app_name, route_prefix="/", blocking=False)
    url = f"http://{settings.http_host}:{settings.http_port}"
    wait_ready(url)
    return url


def start_ray(settings: Settings, metrics_port: int | None = None) -> None:
    """A local Ray with its dashboard, the Jobs API that training jobs, `protege jobs` and
    /v1/admin/jobs use (on the settings' loopback dashboard port, else Ray's 8265), unless
    the improver never trains on Ray: the dashboard's processes cost ~0.9 GiB of memory
    and ~10 s of startup (measured on 2 busy cores)."""
    import ray

    from protege.jobs import dashboard_port

    ray.init(
        include_dashboard=settings.improver_ray != "never",
        dashboard_port=dashboard_port(settings),
        log_to_driver=False,
        _metrics_export_port=metrics_port,
        # Not PROTEGE_*: a runtime_env is shown in Ray's job and Serve details.
        runtime_env={
            "env_vars": {
                k: v
                for k, v in os.environ.items()
                if k.startswith(("RAY_SERVE_", "HF_", "TRANSFORMERS_"))
            }
        },
    )


def secret_variables() -> list[str]:
    return [f"{ENV_PREFIX}{name.upper()}" for name in sorted(ENV_ONLY_FIELDS)]


def export_secrets(settings: Settings) -> None:
    """Put the settings' secrets in this process's environment, just before `ray.init`:
    the raylet it starts inherits it, and the replicas the raylet starts inherit the
    raylet's, so they read the secrets as any process reads its own."""
    wanted = secret_env(settings)
    for name in secret_variables():
        _exported.setdefault(name, os.environ.get(name))
        if name in wanted:
            os.environ[name] = wanted[name]
        else:  # unset here: the replicas must not find a stale one either
            os.environ.pop(name, None)


def check_secrets_match(settings: Settings) -> None:
    """Ray already runs: its replicas see the environment it was started with."""
    wanted = secret_env(settings)
    stale = [n for n in secret_variables() if os.environ.get(n) != wanted.get(n)]
    if stale:
        raise RuntimeError(
            f"{stale} differ from the environment Ray was started with, and its replicas "
            "would not see the new values: stop Ray first (stop_serve)"
        )


def restore_environment() -> None:
    for name, previous in _exported.items():
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous
    _exported.clear()


def wait_ready(url: str, timeout_s: float = 300.0) -> dict:
    """Poll /readyz until the models are loaded; raise with the last detail on timeout."""
    deadline = time.monotonic() + timeout_s
    detail: object = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/readyz", timeout=5)
            detail = response.json()
            if response.status_code == 200:
                return detail
        except (httpx.HTTPError, ValueError) as exc:
            detail = repr(exc)
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f} s: {detail}")


def stop_serve() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    restore_environment()
