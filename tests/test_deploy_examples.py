"""The deployment examples stay consistent with the code (they are not run here)."""

from __future__ import annotations

import re

import yaml

from tests.conftest import REPO

DEPLOY = REPO / "examples" / "deploy"


def _code_text() -> str:
    return "\n".join(p.read_text() for folder in ("agent", "tools")
                     for p in (REPO / folder).rglob("*.py"))


def test_compose_runs_every_component_the_issue_names() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert {"perfagent", "postgres", "chroma", "redis", "otel-collector", "prometheus",
            "grafana"} <= set(compose["services"])
    # Every file a service mounts from the repository exists.
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).resolve().exists(), source


def test_settings_in_the_examples_are_ones_perfagent_reads() -> None:
    code = _code_text()
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "perfagent.yaml").read_text()))
    names = set(compose["services"]["perfagent"]["environment"])
    for doc in docs:
        if doc["kind"] in ("Secret", "ConfigMap"):
            names |= set(doc.get("stringData") or doc.get("data"))
    perfagent_names = {n for n in names if n.startswith(("PERFAGENT_", "CHROMA_"))}
    assert perfagent_names
    for name in perfagent_names:
        assert re.search(rf"[\"']{name}[\"']", code), f"{name} is not read anywhere"


def test_prometheus_scrapes_the_metrics_route_and_probes_use_healthz() -> None:
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["metrics_path"] == "/metrics"
    deployment = next(d for d in yaml.safe_load_all((DEPLOY / "k8s" / "perfagent.yaml").read_text())
                      if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_the_servers_answer_the_names_their_clients_use() -> None:
    """A server answers only its own host names (421 otherwise): the scrape target and
    the probes' Host (the pod address) must be among them."""
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    hosts = compose["services"]["perfagent"]["environment"]["PERFAGENT_SERVER_HOSTS"].split(",")
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    for target in prometheus["scrape_configs"][0]["static_configs"][0]["targets"]:
        assert target.split(":")[0] in hosts
    deployment = next(d for d in yaml.safe_load_all((DEPLOY / "k8s" / "perfagent.yaml").read_text())
                      if d["kind"] == "Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert "$(POD_IP)" in env["PERFAGENT_SERVER_HOSTS"]["value"].split(",")
