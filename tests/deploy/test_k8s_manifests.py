"""The K3s manifests of the cloud tier validate against Kubernetes' schemas, offline."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from evc.config import CloudConfig
from evc.harness.broker import render_config

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())
FILES = [K8S / name for name in KUSTOMIZATION["resources"]]
# Oldest Kubernetes the manifests must work on (K3s of 2024 onwards).
KUBERNETES_VERSION = "1.29"
EVC_UID = 10001


def _documents() -> list[dict[str, Any]]:
    return [doc for path in FILES for doc in yaml.safe_load_all(path.read_text()) if doc]


def _named(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}"
    return found[0]


def _directives(conf: str) -> list[str]:
    # Mosquitto has whole-line comments only.
    lines = (line.strip() for line in conf.splitlines())
    return [" ".join(line.split()) for line in lines if line and not line.startswith("#")]


def test_kustomization_lists_every_manifest() -> None:
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}

    assert set(KUSTOMIZATION["resources"]) == on_disk


def _id(document: dict[str, Any]) -> str:
    return f"{document['kind']}/{document['metadata']['name']}"


@pytest.mark.parametrize("document", _documents(), ids=_id)
def test_manifest_validates_against_the_kubernetes_schema(document: dict[str, Any]) -> None:
    # strict: an unknown or misspelt field is an error, as with kubectl's field validation.
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def _pod_specs() -> list[dict[str, Any]]:
    return [d["spec"]["template"]["spec"] for d in _documents() if "template" in d.get("spec", {})]


@pytest.mark.parametrize("pod", _pod_specs(), ids=lambda p: p["containers"][0]["name"])
def test_pods_run_non_root_with_limits_and_probes(pod: dict[str, Any]) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    for container in pod.get("initContainers", []) + pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert {"requests", "limits"} <= set(container["resources"]), container["name"]
    for container in pod["containers"]:
        assert {"readinessProbe", "livenessProbe"} <= set(container), container["name"]


def test_broker_config_has_the_cloud_template_settings() -> None:
    configmap = _named("ConfigMap", "evc-mosquitto")
    rendered = render_config(
        "cloud", port=1883, bind_address="0.0.0.0", data_dir="/mosquitto/data",  # noqa: S104
        log_file="/dev/stdout", user="mosquitto",
    )

    assert _directives(configmap["data"]["mosquitto.conf"]) == _directives(rendered)


def test_broker_keeps_its_data_on_a_persistent_volume() -> None:
    broker = _named("StatefulSet", "evc-mosquitto")
    mounts = broker["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]

    assert {"name": "data", "mountPath": "/mosquitto/data"} in mounts
    assert broker["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def _cloud_yaml() -> str:
    text: str = _named("ConfigMap", "evc-cloud")["data"]["cloud.yaml"]
    return text


def _init_script() -> str:
    pod = _named("StatefulSet", "evc-cloud")["spec"]["template"]["spec"]
    script: str = pod["initContainers"][0]["args"][0]
    return script


def test_cloud_config_validates_as_a_cloud_config() -> None:
    config = CloudConfig.model_validate(yaml.safe_load(_cloud_yaml()))
    service = _named("Service", "evc-mosquitto")

    assert config.cloud.address.host == service["metadata"]["name"]
    assert config.cloud.address.port == service["spec"]["ports"][0]["port"]
    assert config.ingest.share_group is not None
    assert config.metrics.port is not None
    assert config.metrics.host == "0.0.0.0"  # noqa: S104


@pytest.mark.parametrize("pod_name", ["evc-cloud-0", "evc-cloud-1"])
def test_each_worker_gets_its_own_worker_id(pod_name: str) -> None:
    # The init container's sed expression, applied here with Python's equivalent.
    match = re.search(r's/\^\( \*worker_id:\)\.\*/\\1 \$\{POD_NAME\}/', _init_script())
    assert match, "the init container must set worker_id from the pod name"
    per_pod = re.sub(r"^( *worker_id:).*", rf"\1 {pod_name}", _cloud_yaml(), flags=re.MULTILINE)

    assert CloudConfig.model_validate(yaml.safe_load(per_pod)).ingest.worker_id == pod_name


def test_workers_run_the_cloud_daemon_with_two_replicas() -> None:
    workers = _named("StatefulSet", "evc-cloud")
    container = workers["spec"]["template"]["spec"]["containers"][0]
    ports = [port["containerPort"] for port in container["ports"]]

    assert workers["spec"]["replicas"] == 2
    assert container["args"][:3] == ["cloud", "run", "--config"]
    assert "--validate-config" in _init_script()
    assert CloudConfig.model_validate(yaml.safe_load(_cloud_yaml())).metrics.port in ports
    assert workers["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == EVC_UID


def test_dockerfile_user_has_the_uid_the_pods_run_as() -> None:
    assert f"ARG EVC_UID={EVC_UID}" in (ROOT / "Dockerfile").read_text()
