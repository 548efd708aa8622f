"""The Grafana dashboard and the metrics table of docs/deploy.md name exactly what the real server exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx

from qadapter.testing.server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[2]


def exported_families(server: ServerProcess) -> dict[str, str]:
    """Metric family → type, from /metrics' `# TYPE` lines (present even before a first sample);
    prometheus_client's `*_created` timestamps are left out."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    families = re.findall(r"^# TYPE (qadapter_\w+) (\w+)$", text, re.MULTILINE)
    return {name: kind for name, kind in families if not name.endswith("_created")}


def family_of(series: str, families: dict[str, str]) -> str:
    """`x_bucket` / `x_sum` / `x_count` of a histogram x belong to x."""
    base = re.sub(r"_(bucket|sum|count)$", "", series)
    return base if families.get(base) == "histogram" else series


def test_the_dashboard_queries_only_exported_metrics(server: ServerProcess) -> None:
    families = exported_families(server)
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/qadapter.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"qadapter_\w+", target["expr"])
    }
    assert queried and {family_of(name, families) for name in queried} <= set(families)


def test_the_docs_metrics_table_lists_every_exported_metric(server: ServerProcess) -> None:
    page = (ROOT / "docs" / "deploy.md").read_text()
    section = page[page.index("\n## Metrics\n") :]
    documented = dict(re.findall(r"^\| `(qadapter_\w+)` \| (\w+) \|", section, re.MULTILINE))
    assert documented == exported_families(server)  # names and types
