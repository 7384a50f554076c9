"""The Grafana dashboard only charts metrics perfagent really exports."""

from __future__ import annotations

import json
import re

from agent.telemetry import Metrics
from tests.conftest import REPO

DASHBOARD = REPO / "examples" / "grafana" / "perfagent-dashboard.json"


def _exported_names() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_count", f"{family.name}_sum"}
        if family.type == "counter":
            names.add(f"{family.name}_total")
    return names


def test_every_panel_queries_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = _exported_names()
    queried: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            queried |= set(re.findall(r"\bperfagent_[a-z_]+", target["expr"]))
    assert queried, "no perfagent metric is charted"
    assert queried <= exported, f"charted but never exported: {sorted(queried - exported)}"
    # Every family the server exports is on the dashboard.
    families = {n for n in exported if not n.endswith(("_bucket", "_sum", "_created"))}
    charted = {re.sub(r"_(bucket|count|total)$", "", n) for n in queried}
    missing = {n for n in families if re.sub(r"_(count|total)$", "", n) not in charted}
    assert not missing, f"exported but not charted: {sorted(missing)}"
