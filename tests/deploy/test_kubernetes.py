"""deploy/kubernetes: what can be checked without a cluster.

Each kustomization renders with ``kubectl kustomize``; every object validates against the
Kubernetes 1.30 schemas (kubernetes-validate, strict: unknown fields fail) and the custom
resources against structural schemas; every SYNCTRAIL_* variable is a setting of the process it
configures and every command one the CLI has; probes ask the paths and ports the processes
really serve (read from the aiohttp/Faust apps themselves); the alert rules and the dashboard
are compose's; no secret is written into a manifest; pods run as the image's non-root user with
a read-only root filesystem and no capabilities.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr

from connectors.broker import free_port
from connectors.cli import build_parser
from streams.settings import CommonSettings
from tests.compose.test_compose_file import PROCESS_PACKAGES, env_names, settings_classes
from tests.connectors.bridge.helpers import (
    AUTH,
    bridge_settings,
    envelope,
    running_bridge,
    seq_of,
)
from tests.deploy.kube import (
    CRD_GROUPS,
    CRD_SCHEMAS,
    DEPLOY,
    NAMESPACE,
    RENDERS,
    containers,
    dockerfile_user,
    environment,
    find,
    kustomization,
    pod_spec,
    process_of,
    render,
    workloads,
)
from tests.support import REPO, wait_for, wait_for_records

KUBERNETES_VERSION = "1.30"
COMPOSE = REPO / "compose"
PROJECT_VERSION = "0.1.0"

# `synctrail <process>` → (listen host variable, listen port variable).
LISTEN = {
    "bridge": ("SYNCTRAIL_BRIDGE_HOST", "SYNCTRAIL_BRIDGE_PORT"),
    "worker": ("SYNCTRAIL_WORKER_WEB_HOST", "SYNCTRAIL_WORKER_WEB_PORT"),
    "slack": ("SYNCTRAIL_SLACK_METRICS_HOST", "SYNCTRAIL_SLACK_METRICS_PORT"),
    "exporter": ("SYNCTRAIL_EXPORTER_HOST", "SYNCTRAIL_EXPORTER_PORT"),
}

renders = pytest.mark.parametrize("name", sorted(RENDERS))


def settings_class_of(process: str) -> list[type]:
    if process == "topics":
        return [CommonSettings]
    package = PROCESS_PACKAGES[process]
    return [c for c in settings_classes() if c.__module__.startswith(f"{package}.")]


def allowed_variables(process: str) -> set[str]:
    return set().union(*(env_names(c) for c in settings_class_of(process)))


def setting_default(process: str, variable: str) -> Any:
    for cls in settings_class_of(process):
        prefix = str(cls.model_config.get("env_prefix") or "").upper()
        field = variable.removeprefix(prefix).lower()
        if field in cls.model_fields:
            return cls.model_fields[field].default
    raise KeyError(variable)


def secret_variables() -> set[str]:
    """Every variable whose setting is a SecretStr, in any settings class."""
    names: set[str] = set()
    for cls in settings_classes():
        prefix = str(cls.model_config.get("env_prefix") or "").upper()
        for field, info in cls.model_fields.items():
            if "SecretStr" in str(info.annotation):
                names.add(f"{prefix}{field.upper()}")
    return names


def served_paths(process: str, tmp_path: Path) -> set[str]:
    """GET paths of the process's own HTTP app, built as the process builds it."""
    if process == "bridge":
        from connectors.bridge.server import create_app
        from connectors.bridge.settings import BridgeSettings

        app = create_app(
            BridgeSettings(bridge_tokens=SecretStr("t"), bridge_spool_dir=tmp_path / "spool")
        )
        return {r.resource.canonical for r in app.router.routes() if r.method == "GET"}
    if process == "worker":
        from streams.settings import WorkerSettings
        from streams.topology import build

        topology = build(WorkerSettings(worker_id="k8s-probes", worker_data_dir=tmp_path))
        return set(topology.app.web.views)
    if process == "slack":
        from connectors.slack.metrics import SlackMetrics, make_app

        app = make_app(SlackMetrics(), lambda: True)
    elif process == "exporter":
        from connectors.exporter.service import Exporter, make_app
        from connectors.exporter.settings import ExporterSettings

        app = make_app(Exporter(ExporterSettings()))
    else:
        raise AssertionError(f"no HTTP server known for {process}")
    return {r.resource.canonical for r in app.router.routes() if r.method == "GET"}


def container_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert port in by_name, f"{container['name']}: no port named {port}"
    return by_name[port]


# --- rendering and schemas -------------------------------------------------------------------


def test_kustomize_renders_the_production_stack():
    objects = render("default")
    assert all(o["metadata"].get("namespace") == NAMESPACE for o in objects)

    bridge = find(objects, "Deployment", "synctrail-bridge")
    assert bridge["spec"]["replicas"] == 2
    assert find(objects, "PodDisruptionBudget", "synctrail-bridge")["spec"]["minAvailable"] == 1
    # one notifications controller → one bridge at a time: per-app order (docs/operations.md)
    assert find(objects, "Service", "synctrail-bridge")["spec"]["sessionAffinity"] == "ClientIP"

    worker = find(objects, "StatefulSet", "synctrail-worker")
    assert worker["spec"]["serviceName"] == "synctrail-worker"
    assert find(objects, "Service", "synctrail-worker")["spec"]["clusterIP"] == "None"
    (claim,) = worker["spec"]["volumeClaimTemplates"]
    (container,) = pod_spec(worker)["containers"]
    env = environment(objects, container)
    assert env["SYNCTRAIL_WORKER_STORE"] == "rocksdb://"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == env["SYNCTRAIL_WORKER_DATA_DIR"]

    slack = find(objects, "Deployment", "synctrail-slack")
    assert slack["spec"]["replicas"] == 1 and slack["spec"]["strategy"]["type"] == "Recreate"
    exporter = find(objects, "Deployment", "synctrail-exporter")
    assert exporter["spec"]["replicas"] == 1 and exporter["spec"]["strategy"]["type"] == "Recreate"
    find(objects, "Service", "synctrail-exporter")

    job = find(objects, "Job", "synctrail-topics")
    assert pod_spec(job)["containers"][0]["args"] == ["topics", "create"]
    find(objects, "ServiceMonitor", "synctrail")
    find(objects, "PrometheusRule", "synctrail")
    dashboard = find(objects, "ConfigMap", "synctrail-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    find(objects, "NetworkPolicy", "synctrail-bridge")
    assert not [o for o in objects if o["kind"] == "Secret"]


def test_base_needs_no_custom_resource_definitions():
    kinds = {o["apiVersion"] for o in render("base")}
    assert not [k for k in kinds if k.startswith(CRD_GROUPS)], kinds


@renders
def test_every_object_validates_against_the_kubernetes_schemas(name):
    checked = 0
    for obj in render(name):
        if obj["apiVersion"].startswith(CRD_GROUPS):
            jsonschema.validate(obj, CRD_SCHEMAS[obj["kind"]])
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
        checked += 1
    assert checked >= 10


def test_the_validator_rejects_a_misplaced_field():
    """kubernetes-validate really checks (strict: unknown fields fail), offline."""
    bridge = find(render("default"), "Deployment", "synctrail-bridge")
    pod_spec(bridge)["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bridge, KUBERNETES_VERSION, strict=True)
    monitor = find(render("default"), "ServiceMonitor", "synctrail")
    monitor["spec"]["endpoints"][0]["intreval"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, CRD_SCHEMAS["ServiceMonitor"])


def test_example_secret_and_argocd_application_validate():
    for doc in yaml.safe_load_all((DEPLOY / "secret.example.yaml").read_text()):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    application = yaml.safe_load((DEPLOY / "argocd-application.yaml").read_text())
    jsonschema.validate(application, CRD_SCHEMAS["Application"])


# --- settings, commands, probes --------------------------------------------------------------


@renders
def test_every_synctrail_variable_is_a_setting_of_the_process_it_configures(name):
    objects = render(name)
    for workload, _, container in containers(objects):
        process = process_of(container)
        allowed = allowed_variables(process)
        variables = {k for k in environment(objects, container) if k.startswith("SYNCTRAIL_")}
        unknown = variables - allowed
        assert not unknown, f"{workload['metadata']['name']} sets {sorted(unknown)}"


@renders
def test_every_container_runs_a_synctrail_command(name):
    parser = build_parser()
    for workload, _, container in containers(render(name)):
        args = container["args"]
        try:
            parser.parse_args(args)
        except SystemExit:
            pytest.fail(
                f"{workload['metadata']['name']}: `synctrail {' '.join(args)}` is no command"
            )


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict[str, set[str]]:
    return {p: served_paths(p, tmp_path_factory.mktemp(p)) for p in LISTEN}


def test_probes_ask_paths_and_ports_the_processes_serve(served):
    objects = render("default")
    probed: dict[str, set[str]] = {}
    for _, _, container in containers(objects):
        process = process_of(container)
        probes = [
            container[k]
            for k in ("startupProbe", "livenessProbe", "readinessProbe")
            if k in container
        ]
        if process not in LISTEN:
            assert not probes, f"{process} serves no HTTP"
            continue
        env = environment(objects, container)
        host_var, port_var = LISTEN[process]
        port = int(env.get(port_var) or setting_default(process, port_var))
        host = env.get(host_var) or setting_default(process, host_var)
        assert host == "0.0.0.0", f"{process} listens on {host}: the kubelet cannot reach it"
        assert {p["containerPort"] for p in container["ports"]} == {port}
        assert "livenessProbe" in container and "readinessProbe" in container, process
        for probe in probes:
            get = probe["httpGet"]
            assert container_port(container, get["port"]) == port, f"{process} probe port"
            assert get["path"] in served[process], f"{process} does not serve {get['path']}"
            probed.setdefault(process, set()).add(get["path"])
    assert probed["bridge"] == {"/readyz", "/healthz"}
    assert probed["worker"] >= {"/readyz", "/healthz"}
    assert probed["exporter"] == {"/readyz", "/healthz"}


def test_services_and_the_service_monitor_reach_the_metrics_port(served):
    objects = render("default")
    monitor = find(objects, "ServiceMonitor", "synctrail")
    selector = monitor["spec"]["selector"]
    (component_in,) = selector["matchExpressions"]
    scraped = []
    for service in (o for o in objects if o["kind"] == "Service"):
        labels = service["metadata"]["labels"]
        selected = all(labels.get(k) == v for k, v in selector["matchLabels"].items()) and (
            labels.get(component_in["key"]) in component_in["values"]
        )
        pods = [
            w
            for w in workloads(objects)
            if all(
                w["spec"]["template"]["metadata"]["labels"].get(k) == v
                for k, v in service["spec"]["selector"].items()
            )
        ]
        assert len(pods) == 1, (
            f"Service {service['metadata']['name']} selects {len(pods)} workloads"
        )
        (container,) = pod_spec(pods[0])["containers"]
        for port in service["spec"]["ports"]:
            container_port(container, port["targetPort"])
        if selected:
            scraped.append(service["metadata"]["name"])
            for endpoint in monitor["spec"]["endpoints"]:
                assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
                assert endpoint["path"] in served[process_of(container)]
    # Prometheus names the job after the Service: the jobs compose's rules and dashboard use.
    compose_jobs = {
        job["job_name"]
        for job in yaml.safe_load((COMPOSE / "prometheus" / "prometheus.yml").read_text())[
            "scrape_configs"
        ]
        if job["job_name"].startswith("synctrail-")
    }
    assert sorted(scraped) == sorted(compose_jobs)
    assert "jobLabel" not in monitor["spec"]


# --- one source for rules and dashboard ------------------------------------------------------


def _generator():
    spec = importlib.util.spec_from_file_location("k8s_generate", DEPLOY / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_rules_and_dashboard_are_up_to_date():
    stale = _generator().stale()
    assert not stale, f"run: python deploy/kubernetes/generate.py ({stale})"


def test_alert_rules_and_dashboard_are_the_compose_ones():
    objects = render("default")
    rule = find(objects, "PrometheusRule", "synctrail")
    compose_rules = yaml.safe_load((COMPOSE / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"] == compose_rules
    dashboard = find(objects, "ConfigMap", "synctrail-dashboard")
    compose_dashboards = {
        name: (COMPOSE / "grafana" / "dashboards" / name).read_text()
        for name in ("synctrail.json", "dora.json")
    }
    assert dashboard["data"] == compose_dashboards

    # and the datasource the dashboards name is the one the component provides
    source = find(objects, "ConfigMap", "synctrail-grafana-datasource")
    assert source["metadata"]["labels"]["grafana_datasource"] == "1"
    (provided,) = yaml.safe_load(next(iter(source["data"].values())))["datasources"]
    (compose_source,) = yaml.safe_load(
        (COMPOSE / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    used = {
        ds["uid"]
        for text in compose_dashboards.values()
        for ds in _datasources(json.loads(text))
        if ds.get("type") == "prometheus"
    }
    assert used == {provided["uid"]} == {compose_source["uid"]}


def _datasources(node: Any):
    if isinstance(node, dict):
        if isinstance(node.get("datasource"), dict):
            yield node["datasource"]
        for value in node.values():
            yield from _datasources(value)
    elif isinstance(node, list):
        for value in node:
            yield from _datasources(value)


def test_prometheus_rule_passes_promtool(tmp_path):
    from tests.compose.promharness import binary

    rule = find(render("default"), "PrometheusRule", "synctrail")
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    result = subprocess.run(
        [binary("promtool"), "check", "rules", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- secrets ---------------------------------------------------------------------------------


@renders
def test_no_secret_value_is_written_into_the_manifests(name):
    objects = render(name)
    assert not [o for o in objects if o["kind"] == "Secret"]
    secrets = secret_variables()
    assert {"SYNCTRAIL_BRIDGE_TOKENS", "SYNCTRAIL_SLACK_TOKEN"} <= secrets
    for data in (o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"):
        assert not set(data) & secrets
    example = example_secret_keys()
    for workload, spec, container in containers(objects):
        for item in container.get("env", []):
            if item["name"] in secrets:
                assert "value" not in item, f"{workload['metadata']['name']}: {item['name']}"
                ref = item["valueFrom"]["secretKeyRef"]
                assert ref["key"] in example.get(ref["name"], set()), ref
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in example


def example_secret_keys() -> dict[str, set[str]]:
    """Secret name → the keys secret.example.yaml shows (optional ones commented out)."""
    keys = {}
    for text in (DEPLOY / "secret.example.yaml").read_text().split("\n---\n"):
        doc = yaml.safe_load(text)
        optional = re.findall(r"^  # ([\w.-]+): ", text.split("stringData:")[1], re.MULTILINE)
        keys[doc["metadata"]["name"]] = set(doc["stringData"]) | set(optional)
    return keys


@renders
def test_the_example_secret_and_the_application_are_never_applied(name):
    for path in DEPLOY.rglob("kustomization.yaml"):
        listed = yaml.safe_load(path.read_text()).get("resources", [])
        assert not {"secret.example.yaml", "argocd-application.yaml"} & set(listed), path
    assert not [o for o in render(name) if o["kind"] in {"Secret", "Application"}]


# --- pods --------------------------------------------------------------------------------------


@renders
def test_pods_run_as_the_images_non_root_user_read_only_without_capabilities(name):
    uid, gid = dockerfile_user()
    assert uid != 0
    for workload, spec, container in containers(render(name)):
        where = f"{workload['metadata']['name']}/{container['name']}"
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (uid, gid, gid), where
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec["automountServiceAccountToken"] is False, where
        own = container["securityContext"]
        assert own["readOnlyRootFilesystem"] is True, where
        assert own["allowPrivilegeEscalation"] is False, where
        assert own["capabilities"] == {"drop": ["ALL"]}, where
        assert own.get("runAsUser", uid) == uid, where
        writable = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert "/tmp" in writable, where


@renders
def test_every_container_has_requests_and_limits(name):
    def amount(value: str) -> float:
        units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
        for suffix, factor in units.items():
            if value.endswith(suffix):
                return float(value.removesuffix(suffix)) * factor
        return float(value)

    for workload, _, container in containers(render(name)):
        resources = container["resources"]
        for key in ("cpu", "memory"):
            request, limit = resources["requests"][key], resources["limits"][key]
            assert amount(request) <= amount(limit), f"{workload['metadata']['name']} {key}"


@renders
def test_every_object_carries_the_recommended_labels(name):
    version = _project_version()
    for obj in render(name):
        labels = obj["metadata"].get("labels", {})
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert labels.get("app.kubernetes.io/name") == "synctrail", where
        assert labels.get("app.kubernetes.io/part-of") == "synctrail", where
        assert labels.get("app.kubernetes.io/instance") == "synctrail", where
        assert labels.get("app.kubernetes.io/version") == version, where
        assert labels.get("app.kubernetes.io/managed-by") == "kustomize", where
        if obj["kind"] in {"Deployment", "StatefulSet", "Job"}:
            template = obj["spec"]["template"]["metadata"]["labels"]
            assert template["app.kubernetes.io/component"] == labels["app.kubernetes.io/component"]
            assert template["app.kubernetes.io/version"] == version


def _project_version() -> str:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_every_container_runs_the_one_image_built_from_compose_dockerfile():
    (image,) = kustomization(DEPLOY / "base")["images"]
    assert image["name"] == "synctrail" and image["newTag"] == _project_version()
    images = {c["image"] for _, _, c in containers(render("default"))}
    assert images == {f"{image['newName']}:{image['newTag']}"}
    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    builds = {
        (s["build"]["context"], s["build"]["dockerfile"])
        for s in compose["services"].values()
        if "build" in s
    }
    assert builds == {("..", "compose/Dockerfile")}
    # The manifests keep the workers' tables in RocksDB: the image must carry rocksdict.
    assert "pip install '.[rocksdb]'" in (COMPOSE / "Dockerfile").read_text()


# --- the bridge ------------------------------------------------------------------------------


def test_network_policy_admits_only_argocd_notifications_and_prometheus_to_the_bridge():
    objects = render("default")
    policy = find(objects, "NetworkPolicy", "synctrail-bridge")
    bridge = find(objects, "Deployment", "synctrail-bridge")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    template_labels = bridge["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= template_labels.items()
    others = [w for w in workloads(objects) if w is not bridge]
    assert not [
        w for w in others if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    peers = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    assert peers == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "argocd"}},
            "podSelector": {
                "matchLabels": {"app.kubernetes.io/name": "argocd-notifications-controller"}
            },
        },
        {
            "namespaceSelector": {},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        },
    ]
    for rule in policy["spec"]["ingress"]:
        assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]


def test_bridge_spool_outlives_a_container_restart_and_termination_leaves_time_to_flush():
    objects = render("default")
    bridge = find(objects, "Deployment", "synctrail-bridge")
    spec = pod_spec(bridge)
    (container,) = spec["containers"]
    env = environment(objects, container)
    spool = next(
        m for m in container["volumeMounts"] if m["mountPath"] == env["SYNCTRAIL_BRIDGE_SPOOL_DIR"]
    )
    volume = next(v for v in spec["volumes"] if v["name"] == spool["name"])
    # an emptyDir on disk lives as long as the pod, across container restarts (not medium: Memory)
    assert volume["emptyDir"].get("medium") is None
    limit_mib = int(volume["emptyDir"]["sizeLimit"].removesuffix("Mi"))
    assert limit_mib * 2**20 > int(env["SYNCTRAIL_BRIDGE_SPOOL_MAX_BYTES"])
    shutdown = float(
        env.get("SYNCTRAIL_BRIDGE_SHUTDOWN_TIMEOUT_S")
        or setting_default("bridge", "SYNCTRAIL_BRIDGE_SHUTDOWN_TIMEOUT_S")
    )
    produce = float(
        env.get("SYNCTRAIL_BRIDGE_PRODUCE_TIMEOUT_S")
        or setting_default("bridge", "SYNCTRAIL_BRIDGE_PRODUCE_TIMEOUT_S")
    )
    delay, wait = _prestop_budget(container)
    assert spec["terminationGracePeriodSeconds"] >= delay + wait + 3 + shutdown + produce + 1
    assert bridge["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def _prestop_script(container: dict[str, Any]) -> str:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["python", "-c"]
    return command[2]


def _prestop_budget(container: dict[str, Any]) -> tuple[float, float]:
    """The hook's first pause and its longest wait for the spool (defaults in the script)."""
    script = _prestop_script(container)
    delay = float(script.split('"PRESTOP_DELAY_S", "')[1].split('"')[0])
    wait = float(script.split('"PRESTOP_SPOOL_WAIT_S", "')[1].split('"')[0])
    return delay, wait


async def _run_prestop(script: str, port: int, wait_s: float) -> tuple[int, float]:
    env = {
        **os.environ,
        "SYNCTRAIL_BRIDGE_PORT": str(port),
        "PRESTOP_DELAY_S": "0",
        "PRESTOP_SPOOL_WAIT_S": str(wait_s),
    }
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", script, env=env)
    code = await asyncio.wait_for(process.wait(), wait_s + 30)
    return code, time.monotonic() - started


async def test_bridge_prestop_hook_waits_for_spooled_deliveries_only(tmp_path):
    """The hook, run against a real bridge whose broker is down: it returns at once while the
    spool is empty, and waits out its budget while a delivery is spooled."""
    (container,) = pod_spec(find(render("default"), "Deployment", "synctrail-bridge"))["containers"]
    script = _prestop_script(container)
    down = f"127.0.0.1:{free_port()}"
    settings = bridge_settings(down, "prestop.", tmp_path / "spool", bridge_produce_timeout_s=0.5)
    async with running_bridge(settings) as (client, bridge):
        port = client.server.port
        code, took = await _run_prestop(script, port, wait_s=20)
        assert code == 0 and took < 10, f"empty spool, yet the hook took {took:.1f}s"

        resp = await client.post("/v1/sync", data=envelope("guestbook", 1), headers=AUTH)
        assert resp.status == 202 and (await resp.json())["spooled"] is True
        await wait_for(lambda: bridge.spool.records == 1, timeout=10)
        code, took = await _run_prestop(script, port, wait_s=3)
        assert code == 0 and took >= 3, (
            f"a delivery was spooled, yet the hook left after {took:.1f}s"
        )


# --- Argo CD ---------------------------------------------------------------------------------


def test_argocd_application_deploys_this_folder_into_the_namespace():
    application = yaml.safe_load((DEPLOY / "argocd-application.yaml").read_text())
    source = application["spec"]["source"]
    assert (REPO / source["path"] / "kustomization.yaml").is_file()
    assert (REPO / source["path"]).resolve() == DEPLOY
    assert application["spec"]["destination"]["namespace"] == NAMESPACE
    assert "CreateNamespace=true" in application["spec"]["syncPolicy"]["syncOptions"]
    (image,) = kustomization(DEPLOY / "base")["images"]
    (override,) = source["kustomize"]["images"]
    # Argo CD's override applies after base/ renamed `synctrail`: it must name the new name
    assert override == f"{image['newName']}={image['newName']}:{image['newTag']}"


def test_argocd_notifications_config_points_at_the_bridge_service():
    objects = render("default")
    service = find(objects, "Service", "synctrail-bridge")
    config = yaml.safe_load((REPO / "deploy" / "argocd-notifications-cm.yaml").read_text())
    webhook = yaml.safe_load(config["data"]["service.webhook.synctrail"])
    (port,) = service["spec"]["ports"]
    assert webhook["url"] == f"http://synctrail-bridge.{NAMESPACE}.svc:{port['port']}"


def test_topics_job_runs_after_the_config_it_reads_and_before_the_processes():
    objects = render("default")
    job = find(objects, "Job", "synctrail-topics")
    annotations = job["metadata"]["annotations"]
    assert annotations["argocd.argoproj.io/hook"] == "Sync"
    job_wave = int(annotations["argocd.argoproj.io/sync-wave"])
    spec = pod_spec(job)
    needs = [find(objects, "ServiceAccount", spec["serviceAccountName"])]
    needs += [
        find(objects, "ConfigMap", s["configMapRef"]["name"])
        for s in spec["containers"][0].get("envFrom", [])
    ]
    for obj in needs:
        wave = int(obj["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", 0))
        assert wave < job_wave, obj["metadata"]["name"]
    for workload in workloads(objects):
        if workload is not job:
            wave = int(
                workload["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", 0)
            )
            assert wave > job_wave, workload["metadata"]["name"]


async def test_a_spool_copied_from_a_lost_bridge_drains_through_a_one_off_bridge(
    broker, topics, tmp_path
):
    """docs/kubernetes.md, "lost node": copy the spool folder (without its lock) and start a
    bridge on the copy; it sends every spooled delivery to Kafka, in order, and empties."""
    lost = tmp_path / "node-disk" / "spool"
    down = f"127.0.0.1:{free_port()}"
    settings = bridge_settings(down, topics, lost, bridge_produce_timeout_s=0.5)
    async with running_bridge(settings) as (client, bridge):
        for seq in range(3):
            resp = await client.post("/v1/sync", data=envelope("guestbook", seq), headers=AUTH)
            assert resp.status == 202 and (await resp.json())["spooled"] is True
        assert bridge.spool.records == 3
        # the node is lost while the bridge holds its lock: copy the folder as it is on disk
        recovered = tmp_path / "recovered-spool"
        shutil.copytree(lost, recovered, ignore=shutil.ignore_patterns("lock"))

    one_off = bridge_settings(broker.bootstrap, topics, recovered)
    async with running_bridge(one_off) as (client, bridge):

        async def drained() -> bool:
            status = await (await client.get("/readyz")).json()
            return status["spool"]["records"] == 0

        await wait_for(drained, timeout=60, what="the recovered spool drained")
    records = await wait_for_records(broker.bootstrap, f"{topics}sync-events", 3)
    in_order = sorted(records, key=lambda r: (r.partition, r.offset))
    assert [seq_of(r.value) for r in in_order if r.key == "argocd/guestbook"] == [0, 1, 2]


def test_the_resources_table_in_the_docs_is_what_the_manifests_request():
    docs = (REPO / "docs" / "kubernetes.md").read_text()
    table = docs.split("## Resources")[1].split("\n## ")[0]
    rows = {
        line.split("|")[1].strip(): line.split("|")[3].strip()
        for line in table.splitlines()
        if line.startswith("| ") and "→" in line and not line.startswith("| process")
    }
    names = {
        "bridge": "synctrail-bridge",
        "worker": "synctrail-worker",
        "Slack connector": "synctrail-slack",
        "exporter": "synctrail-exporter",
        "topics Job": "synctrail-topics",
    }
    assert set(rows) == set(names)
    by_name = {w["metadata"]["name"]: c for w, _, c in containers(render("default"))}
    for row, name in names.items():
        resources = by_name[name]["resources"]
        cpu = f"CPU {resources['requests']['cpu']} → {resources['limits']['cpu']}"
        memory = (
            f"memory {resources['requests']['memory'].replace('Mi', ' Mi')} → "
            f"{resources['limits']['memory'].replace('Mi', ' Mi')}"
        )
        assert rows[row] == f"{cpu}; {memory}", row


def test_the_applications_image_override_reaches_every_container(tmp_path):
    """What Argo CD does with source.kustomize.images (`kustomize edit set image`), on a copy."""
    application = yaml.safe_load((DEPLOY / "argocd-application.yaml").read_text())
    (override,) = application["spec"]["source"]["kustomize"]["images"]
    name = override.split("=")[0]
    copy = tmp_path / "kubernetes"
    shutil.copytree(DEPLOY, copy)
    root = kustomization(copy)
    root["images"] = [
        {"name": name, "newName": "registry.test/platform/synctrail", "newTag": "9.9"}
    ]
    (copy / "kustomization.yaml").write_text(yaml.safe_dump(root))
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(copy)], capture_output=True, text=True, check=True
    ).stdout
    objects = [doc for doc in yaml.safe_load_all(rendered) if doc]
    assert {c["image"] for _, _, c in containers(objects)} == {
        "registry.test/platform/synctrail:9.9"
    }


def test_the_overlay_in_the_docs_renders_with_its_image_and_settings(tmp_path):
    docs = (REPO / "docs" / "kubernetes.md").read_text()
    block = next(b for b in docs.split("```yaml\n")[1:] if "my-synctrail/kustomization.yaml" in b)
    overlay = yaml.safe_load(block.split("```")[0])
    (tmp_path / "synctrail").symlink_to(REPO)
    (tmp_path / "my-synctrail").mkdir()
    (tmp_path / "my-synctrail" / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(tmp_path / "my-synctrail")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    objects = [doc for doc in yaml.safe_load_all(rendered) if doc]
    (image,) = overlay["images"]
    assert {c["image"] for _, _, c in containers(objects)} == {
        f"{image['newName']}:{image['newTag']}"
    }
    worker = find(objects, "StatefulSet", "synctrail-worker")
    env = environment(objects, pod_spec(worker)["containers"][0])
    assert env["SYNCTRAIL_KAFKA_BOOTSTRAP"].startswith("kafka-0.kafka.svc:9092")
    assert env["SYNCTRAIL_SLACK_ROUTES"] == "project:payments*=#payments"
