"""Rendering deploy/kubernetes with kubectl's Kustomize, and what the tests read from it.

No cluster is involved: ``kubectl kustomize`` only builds the manifests. Debian's ``kubectl``
package carries Kustomize; ``make test`` installs it when missing.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.support import REPO

DEPLOY = REPO / "deploy" / "kubernetes"

# Every kustomization a user may apply: the default stack, the stack without prometheus-operator
# or Grafana, and the overlay for a Kafka with SASL_SSL.
RENDERS = {
    "default": DEPLOY,
    "base": DEPLOY / "base",
    "sasl-ssl": DEPLOY / "examples" / "sasl-ssl",
}
NAMESPACE = "synctrail"
INSTALL_HINT = (
    "Debian's `kubectl` package carries Kustomize: apt-get install kubectl (make test does)"
)

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job", "DaemonSet", "CronJob"}
CRD_GROUPS = ("monitoring.coreos.com/", "argoproj.io/")


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        raise RuntimeError(f"kubectl is not installed. {INSTALL_HINT}")
    return path


@functools.cache
def render_text(name: str) -> str:
    """``kubectl kustomize`` of one of :data:`RENDERS`."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(RENDERS[name])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {RENDERS[name]} failed:\n{result.stderr}"
    return result.stdout


def render(name: str) -> list[dict[str, Any]]:
    """The rendered objects (a fresh copy each call)."""
    return [doc for doc in yaml.safe_load_all(render_text(name)) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} objects"
    return matches[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def workloads(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (o for o in objects if o["kind"] in WORKLOAD_KINDS)


def containers(objects: list[dict[str, Any]]) -> Iterator[tuple[dict, dict, dict]]:
    """(workload, pod spec, container) for every container and init container."""
    for workload in workloads(objects):
        spec = pod_spec(workload)
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            yield workload, spec, container


def config_maps(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}


def environment(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str | None]:
    """The container's environment: envFrom ConfigMaps, then env (literal values; None for
    values from a Secret or the downward API; a ConfigMap key's value when it names one)."""
    maps = config_maps(objects)
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        # A whole Secret as environment would hide which variables it sets: keys one by one.
        assert set(source) == {"configMapRef"}, f"envFrom {source}: only ConfigMaps"
        ref = source["configMapRef"]
        assert ref["name"] in maps, f"envFrom names missing ConfigMap {ref['name']}"
        env.update(maps[ref["name"]])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"].get("configMapKeyRef")
        if ref:
            assert ref["key"] in maps[ref["name"]], f"{item['name']}: no key {ref['key']}"
            env[item["name"]] = maps[ref["name"]][ref["key"]]
        else:
            env[item["name"]] = None
    return env


def process_of(container: dict[str, Any]) -> str:
    """The synctrail subcommand a container runs (the image's entrypoint is `synctrail`)."""
    assert "command" not in container, "the image's entrypoint is synctrail; set args only"
    return container["args"][0]


def kustomization(path: Path) -> dict[str, Any]:
    return yaml.safe_load((path / "kustomization.yaml").read_text())


def dockerfile_user() -> tuple[int, int]:
    """uid and gid of the Dockerfile's (last) USER instruction."""
    users = [
        line.split()[1]
        for line in (REPO / "compose" / "Dockerfile").read_text().splitlines()
        if line.startswith("USER ")
    ]
    assert users, "compose/Dockerfile has no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    return int(uid), int(gid or uid)


# --- structural schemas of the custom resources ----------------------------------------------
# The CRDs' own OpenAPI schemas are not available offline; these cover every field the
# manifests use (additionalProperties: false catches a misspelt or misplaced one) with the
# types prometheus-operator's and Argo CD's documentation give them.

_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
    },
    "additionalProperties": False,
}


def _resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
    }


CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": _resource(
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": _LABEL_SELECTOR,
                "jobLabel": {"type": "string"},
                "namespaceSelector": {"type": "object"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                        },
                    },
                },
            },
        },
    ),
    "PrometheusRule": _resource(
        "monitoring.coreos.com/v1",
        "PrometheusRule",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": _DURATION,
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["expr"],
                                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": _DURATION,
                                        "labels": {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                        },
                                        "annotations": {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    ),
    "Application": _resource(
        "argoproj.io/v1alpha1",
        "Application",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["project", "source", "destination"],
            "properties": {
                "project": {"type": "string"},
                "source": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["repoURL", "path"],
                    "properties": {
                        "repoURL": {"type": "string"},
                        "targetRevision": {"type": "string"},
                        "path": {"type": "string"},
                        "kustomize": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "images": {"type": "array", "items": {"type": "string"}},
                                "namePrefix": {"type": "string"},
                            },
                        },
                    },
                },
                "destination": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "server": {"type": "string"},
                        "name": {"type": "string"},
                        "namespace": {"type": "string"},
                    },
                },
                "syncPolicy": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "automated": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "prune": {"type": "boolean"},
                                "selfHeal": {"type": "boolean"},
                                "allowEmpty": {"type": "boolean"},
                            },
                        },
                        "syncOptions": {
                            "type": "array",
                            "items": {"type": "string", "pattern": r"^[A-Za-z]+=[A-Za-z]+$"},
                        },
                        "retry": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "limit": {"type": "integer"},
                                "backoff": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "duration": {"type": "string"},
                                        "factor": {"type": "integer"},
                                        "maxDuration": {"type": "string"},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    ),
}
