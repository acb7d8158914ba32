"""deploy/grafana and deploy/prometheus query only what msrv exports (DESIGN "Visibility").

The exported names come from the code: a `ServerMetrics` registry rendered as a scrape. The
YAML files are read line by line (no YAML parser in the environment); where `promtool` is
installed, it also checks their syntax, the dashboard's queries, and runs the alert rules'
unit tests (deploy/prometheus/alerts_test.yml).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from msrv.metrics import ServerMetrics

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "msrv-dashboard.json"
PROMETHEUS = DEPLOY / "prometheus"

METRIC = re.compile(r"\b(?:msrv_[a-z_]+|process_[a-z_]+|up)\b")
MADE_BY_PROMETHEUS = {"up"}  # per target, from the scrape itself
# what the issue asks the dashboard to show: sessions, startups, push to ack latency, hosts not
# current, Redis up, config version
CHARTED = {
    "msrv_sessions",
    "msrv_startups_total",
    "msrv_list_ack_seconds_bucket",
    "msrv_hosts_stale",
    "msrv_redis_up",
    "msrv_config_version",
}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_names() -> set[str]:
    """Every series name a server's /metrics can show, from the code's own registry."""
    metrics = ServerMetrics("ms1", "ms1.example.net:8250")
    try:
        text = generate_latest(metrics.registry).decode()
    finally:
        metrics.close()
    names = set()
    for family in text_string_to_metric_families(text):
        # a labelled counter shows no sample until its first label value: name it from its type
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ())}
        names |= {sample.name for sample in family.samples}
    return names


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def dashboard_exprs() -> list[str]:
    exprs = [target["expr"] for panel in panels() for target in panel["targets"]]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def plain(value: str) -> str:
    """A one-line YAML scalar without its quotes or its trailing comment."""
    if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return re.sub(r"\s+#.*$", "", value)


def yaml_values(path: Path, key: str) -> list[str]:
    """The values of `key:` in a block-style YAML file: plain, quoted, or folded (`>-`, `|`)."""
    lines = path.read_text().splitlines()
    values = []
    for i, line in enumerate(lines):
        match = re.match(rf"^(\s*)(?:- )?{key}:\s*(.*?)\s*$", line)
        if not match:
            continue
        indent, value = len(match[1]), match[2]
        if value in {">", ">-", "|", "|-"}:
            block = []
            for more in lines[i + 1 :]:
                if more.strip() and len(more) - len(more.lstrip()) <= indent:
                    break
                block.append(more.strip())
            values.append(" ".join(block).strip())
        else:
            values.append(plain(value))
    return values


def yaml_list(path: Path, key: str) -> list[str]:
    """The items of a top-level key's list."""
    lines = path.read_text().splitlines()
    items = []
    for line in lines[lines.index(f"{key}:") + 1 :]:
        if line and not line[0].isspace():
            break
        if line.strip().startswith("- "):
            items.append(plain(line.strip()[2:]))
    return items


def alert_rules() -> list[str]:
    """alerts.yml cut into one text per rule."""
    return (PROMETHEUS / "alerts.yml").read_text().split("- alert: ")[1:]


def test_exported_names_come_from_the_code():
    names = exported_names()
    assert {"msrv_startups_total", "msrv_list_ack_seconds_bucket", "msrv_info"} <= names
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total"} <= names


@pytest.mark.parametrize(
    "source",
    ["dashboard", "alerts", "alert tests"],
)
def test_every_query_names_only_exported_metrics(source):
    exprs = {
        "dashboard": dashboard_exprs,
        "alerts": lambda: yaml_values(PROMETHEUS / "alerts.yml", "expr"),
        "alert tests": lambda: yaml_values(PROMETHEUS / "alerts_test.yml", "series"),
    }[source]()
    assert exprs
    known = exported_names() | MADE_BY_PROMETHEUS
    for expr in exprs:
        used = set(METRIC.findall(expr))
        assert used, f"{source}: {expr!r} names no metric"
        assert used <= known, f"{source}: {expr!r} uses {sorted(used - known)}, not exported"


def test_dashboard_charts_what_the_issue_asks():
    used = {name for expr in dashboard_exprs() for name in METRIC.findall(expr)}
    assert used >= CHARTED, sorted(CHARTED - used)


def test_dashboard_queries_the_chosen_data_source_and_servers():
    data = dashboard()
    assert data["schemaVersion"] >= 39
    variables = {variable["name"]: variable for variable in data["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource",
        "prometheus",
    )
    assert variables["instance"]["type"] == "query"
    ids = [panel["id"] for panel in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["targets"], panel["title"]
        for source in [panel, *panel["targets"]]:
            assert source["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert 'instance=~"$instance"' in target["expr"], (panel["title"], target["expr"])


def test_panels_do_not_overlap():
    taken: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        pos = panel["gridPos"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        assert not cells & taken, panel["title"]
        taken |= cells


def test_alert_rules_are_complete():
    rules = alert_rules()
    names = [rule.splitlines()[0].strip() for rule in rules]
    assert {
        "MsrvTargetDown",
        "MsrvNoServerInService",
        "MsrvRedisDown",
        "MsrvHostsStale",
        "MsrvConfigVersionsDiffer",
    } == set(names)
    for name, rule in zip(names, rules, strict=True):
        for key in ("expr:", "for:", "severity:", "summary:", "description:"):
            assert key in rule, f"{name} lacks {key}"


def test_scrape_example_loads_the_alerts():
    config = PROMETHEUS / "prometheus.yml"
    assert yaml_values(config, "job_name") == ["msrv"]
    assert "15s" in yaml_values(config, "scrape_interval")
    rule_files = yaml_list(config, "rule_files")
    assert rule_files == ["alerts.yml"]
    assert (PROMETHEUS / rule_files[0]).is_file()


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed")


def promtool(*args: str, cwd: Path = PROMETHEUS) -> None:
    assert PROMTOOL is not None
    run = subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr


@needs_promtool
def test_promtool_checks_the_config_and_rules():
    promtool("check", "config", "prometheus.yml")
    promtool("check", "rules", "alerts.yml")


@needs_promtool
def test_promtool_runs_the_alert_tests():
    promtool("test", "rules", "alerts_test.yml")


@needs_promtool
def test_promtool_parses_the_dashboard_queries(tmp_path):
    # each query as a recording rule, Grafana's variables given values (JSON is YAML)
    rules = [
        {
            "record": f"dashboard:query{i}",
            "expr": expr.replace("$instance", ".*").replace("$__rate_interval", "1m"),
        }
        for i, expr in enumerate(dashboard_exprs())
        if not expr.startswith("label_values(")  # Grafana's, not PromQL
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool("check", "rules", str(path), cwd=tmp_path)
