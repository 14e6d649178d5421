"""The Kubernetes manifests: valid objects, and every environment variable a real setting."""

from __future__ import annotations

import importlib

import kubernetes_validate
import pytest
import yaml

from callmeter.common.settings import env_name
from tests.procs import ROOT

MANIFESTS = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
KUBERNETES = "1.31.0"


def objects() -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    return [(path.name, doc) for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize(("source", "obj"), objects(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_object_is_valid(source: str, obj: dict) -> None:  # type: ignore[type-arg]
    kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def settings_names(service: str) -> set[str]:
    settings_cls = importlib.import_module(f"services.{service}.main").SETTINGS
    return {env_name(settings_cls, field) for field in settings_cls.model_fields}


def test_every_service_has_a_deployment_and_env_names_its_settings() -> None:
    config = next(obj for _, obj in objects() if obj["kind"] == "ConfigMap")
    deployments = {obj["metadata"]["name"]: obj for _, obj in objects() if obj["kind"] == "Deployment"}
    assert set(deployments) == {"api", "orchestrator", "gateway", "metrics", "worker"}
    for name, deployment in deployments.items():
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert container["args"] == [name]
        known = settings_names(name)
        given = {env["name"] for env in container.get("env", [])}
        if container.get("envFrom"):
            given |= set(config["data"])
        # The shared ConfigMap carries a few variables not every service reads; direct env must all be known.
        direct = {env["name"] for env in container.get("env", [])}
        assert direct <= known, f"{name}: unknown settings {direct - known}"
        assert given & known, name
    every_setting = set().union(*(settings_names(name) for name in deployments))
    assert set(config["data"]) <= every_setting, set(config["data"]) - every_setting


def test_services_point_at_the_grpc_ports_the_deployments_serve() -> None:
    ports = {obj["metadata"]["name"]: obj["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
             for _, obj in objects() if obj["kind"] == "Deployment" and obj["metadata"]["name"] != "worker"}
    for _, obj in objects():
        if obj["kind"] == "Service":
            assert obj["spec"]["ports"][0]["targetPort"] == "grpc"
            assert obj["metadata"]["name"] in ports


# Who may connect to each port of each Deployment, as the design's diagram (../shared/DESIGN.md)
# and the addresses the services are given say. "*": anyone (the CLI, CI and dashboard reach the
# api, workers the gateway, both through load balancers); "NAMESPACE/POD": a pod elsewhere.
PROMETHEUS = "monitoring/prometheus"
CALLERS = {
    ("api", "grpc"): {"*"},
    ("orchestrator", "grpc"): {"api", "gateway"},
    ("gateway", "grpc"): {"*"},
    ("metrics", "grpc"): {"api", "orchestrator"},  # metric queries, run summaries
    **{(name, "metrics"): {PROMETHEUS} for name in ("api", "orchestrator", "gateway", "metrics")},
}
# Where each pod may connect, besides DNS: "POD:PORT" in the namespace, "NAMESPACE:PORT" elsewhere
# (TCP unless the port says "/UDP").
DNS = {"kube-system/kube-dns:53/UDP", "kube-system/kube-dns:53"}
DESTINATIONS = {
    "api": {"orchestrator:50052", "metrics:50054", "postgres:5432"},
    "orchestrator": {"postgres:5432", "nats:4222", "metrics:50054"},
    "gateway": {"orchestrator:50052", "nats:4222"},
    "metrics": {"nats:4222", "clickhouse:8123"},
    "bootstrap": {"postgres:5432"},
}


def pod_templates() -> dict[str, dict]:  # type: ignore[type-arg]
    """Name → pod template of every Deployment and Job."""
    return {obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]: obj["spec"]["template"]
            for _, obj in objects() if obj["kind"] in ("Deployment", "Job")}


def policies() -> list[dict]:  # type: ignore[type-arg]
    return [obj["spec"] for _, obj in objects() if obj["kind"] == "NetworkPolicy"]


def selects(selector: dict, labels: dict) -> bool:  # type: ignore[type-arg]
    assert set(selector) <= {"matchLabels"}, selector  # matchExpressions would need more than this check
    return selector.get("matchLabels", {}).items() <= labels.items()


def peer_names(peer: dict) -> set[str]:  # type: ignore[type-arg]
    """The pods of the namespace a peer selects, or "NAMESPACE[/POD]" for one elsewhere."""
    assert set(peer) <= {"podSelector", "namespaceSelector"}, peer
    if "namespaceSelector" not in peer:
        return {name for name, pod in pod_templates().items()
                if selects(peer["podSelector"], pod["metadata"]["labels"])}
    namespace = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
    pod = "/".join(peer.get("podSelector", {}).get("matchLabels", {}).values())
    return {f"{namespace}/{pod}" if pod else namespace}


def applying(name: str, kind: str) -> list[dict]:  # type: ignore[type-arg]
    labels = pod_templates()[name]["metadata"]["labels"]
    return [spec for spec in policies() if kind in spec["policyTypes"] and selects(spec["podSelector"], labels)]


def callers(name: str, port: dict) -> set[str]:  # type: ignore[type-arg]
    """Who the policies let connect to a container port of pod ``name``."""
    allowed: set[str] = set()
    for spec in applying(name, "Ingress"):
        for rule in spec.get("ingress", []):
            if "ports" in rule and not any(p["port"] in (port["name"], port["containerPort"]) for p in rule["ports"]):
                continue
            allowed |= set().union(*map(peer_names, rule["from"])) if "from" in rule else {"*"}
    return allowed


def destinations(name: str) -> set[str]:
    """Where the policies let pod ``name`` connect: "PEER:PORT[/UDP]"."""
    allowed: set[str] = set()
    for spec in applying(name, "Egress"):
        for rule in spec.get("egress", []):
            assert "to" in rule and "ports" in rule, f"{name}: an egress rule open to every peer or port"
            ports = {f"{p['port']}" + ("" if p.get("protocol", "TCP") == "TCP" else f"/{p['protocol']}")
                     for p in rule["ports"]}
            allowed |= {f"{peer}:{port}" for peer in set().union(*map(peer_names, rule["to"])) for port in ports}
    return allowed


def test_the_namespace_denies_every_flow_not_allowed() -> None:
    assert {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]} in policies()


def test_every_port_is_reachable_from_exactly_the_callers_the_design_names() -> None:
    served = set()
    for name, pod in pod_templates().items():
        [container] = pod["spec"]["containers"]
        if pod["spec"].get("hostNetwork"):  # no policy applies to it: it must serve nothing
            assert not container.get("ports"), name
            continue
        for port in container.get("ports", []):
            served.add((name, port["name"]))
            assert callers(name, port) == CALLERS.get((name, port["name"]), set()), (name, port["name"])
    assert served == set(CALLERS)


def test_every_pod_connects_only_where_the_design_says() -> None:
    pods = {name for name, pod in pod_templates().items() if not pod["spec"].get("hostNetwork")}
    assert pods == set(DESTINATIONS)
    for name in pods:
        assert destinations(name) == DESTINATIONS[name] | DNS, name


def test_both_ends_of_every_flow_in_the_namespace_allow_it() -> None:
    """The caller's egress and the callee's ingress allow the same flows (a flow needs both)."""
    pods = pod_templates()
    inbound = {(caller, name, str(port["containerPort"])) for name, pod in pods.items()
               for port in pod["spec"]["containers"][0].get("ports", [])
               for caller in callers(name, port) if caller in pods}
    outbound = {(name, *target.split(":")) for name in pods for target in destinations(name)
                if target.split(":")[0] in pods}
    assert inbound == outbound
