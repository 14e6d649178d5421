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
