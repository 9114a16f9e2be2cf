"""The Grafana dashboard (deploy/grafana/gxsubmit.json) queries only metrics gxsubmit exports, groups them
only by labels those metrics carry, and shows every metric family at least once."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from test_deploy_artifacts import metric_names

from gxsubmit import metrics as gxmetrics
from gxsubmit.metrics import exposed_metric_names

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "gxsubmit.json"
#: Labels Prometheus adds when it scrapes (target labels), and the histogram bucket label.
SCRAPE_LABELS = {"namespace", "pod", "instance", "job", "service", "container", "le"}


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _queries(dash: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    for panel in _panels(dash["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            inner = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
            assert inner, f"variable {var['name']}: unexpected query {query!r}"
            yield f"variable {var['name']}", inner.group(1)


def _labels_by_sample_name() -> dict[str, set[str]]:
    labels: dict[str, set[str]] = {}
    for metric in gxmetrics._ALL:
        names = set(metric._labelnames)
        for sample in exposed_metric_names():
            if sample == metric._name or sample.startswith(metric._name + "_"):
                labels.setdefault(sample, set()).update(names)
    return labels


def test_dashboard_uses_only_exported_metrics_and_their_labels() -> None:
    exposed = exposed_metric_names()
    labels = _labels_by_sample_name()
    for where, expr in _queries(_dashboard()):
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= exposed, f"{where}: gxsubmit does not export {names - exposed}"
        allowed = set().union(*(labels[n] for n in names)) | SCRAPE_LABELS
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            used = {g.strip() for g in group.split(",") if g.strip()}
            assert used <= allowed, f"{where}: grouped by {used - allowed}, which {names} do not carry"
        for matcher in re.findall(r"\{([^}]*)\}", expr):
            used = {m.split("=")[0].strip(" !~") for m in matcher.split(",") if m.strip()}
            assert used <= allowed, f"{where}: selects on {used - allowed}"


def test_dashboard_shows_every_metric_family() -> None:
    used: set[str] = set()
    for _, expr in _queries(_dashboard()):
        used |= metric_names(expr)
    families = {m._name for m in gxmetrics._ALL}
    shown = {f for f in families if any(u == f or u.startswith(f + "_") for u in used)}
    assert shown == families, f"no panel for {families - shown}"


def test_dashboard_is_well_formed() -> None:
    dash = _dashboard()
    assert dash["uid"] == "gxsubmit" and dash["schemaVersion"] >= 36
    panels = list(_panels(dash["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "namespace"} <= variables
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert 'namespace=~"$namespace"' in target["expr"], f"{panel['title']}: no $namespace filter"


def test_label_check_is_not_a_rubber_stamp() -> None:
    labels = _labels_by_sample_name()
    assert "status" in labels["gxsubmit_outbox_rows"]
    assert "error_code" in labels["gxsubmit_commands_failed_total"]
    assert "error_code" not in labels["gxsubmit_commands_committed_total"]
    assert "le" not in labels["gxsubmit_stage_duration_seconds_bucket"]  # a scrape-time label: SCRAPE_LABELS
