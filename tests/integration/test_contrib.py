"""contrib/: the Prometheus rules pass `promtool check rules` (Debian's `prometheus` package,
installed by `make setup` where it can be; else the file is parsed and checked here), the
Grafana dashboard is a dashboard, and every metric either names is one the daemon exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest

from killswitch.app import MetricsService, build_services
from killswitch.config import load_settings
from killswitch.daemon import CriticalTasks

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "contrib" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "contrib" / "grafana" / "killswitch.json"
METRIC = re.compile(r"\b(killswitch_[a-z0-9_]+)\b")
# What Prometheus itself records about a scrape target, not exported by any exporter.
SCRAPE_SERIES = {"up"}

# The conditions issue 14 asks the rules to cover, by the alert that covers each.
REQUIRED_ALERTS = {
    "latched": "KillswitchLatched",
    "last kill failed": "KillswitchLastKillFailed",
    "account not ready": "KillswitchAccountNotReady",
    "stream down": "KillswitchStreamDown",
    "alerts rejected": "KillswitchAlertsRejected",
    "events dropped": "KillswitchEventsDropped",
}


def load_yaml_subset(text: str) -> Any:
    """Read the block-style YAML the rule file is written in (mappings, sequences, plain and
    double-quoted scalars, comments); raise ValueError on anything else. PyYAML is not a
    dependency of this project, and promtool is not installable everywhere."""
    lines = [
        (len(raw) - len(raw.lstrip(" ")), raw.strip())
        for raw in text.splitlines()
        if raw.strip() and not raw.strip().startswith("#")
    ]
    if any("\t" in raw for raw in text.splitlines()):
        raise ValueError("tabs are not YAML indentation")
    pos = 0

    def scalar(value: str) -> str:
        value = value.strip()
        if value.startswith('"'):
            if not value.endswith('"') or len(value) < 2:
                raise ValueError(f"unterminated string: {value}")
            decoded: str = json.loads(value)
            return decoded
        if value.startswith(("'", "[", "{", "&", "*", "!", "|", ">")):
            raise ValueError(f"unsupported YAML: {value}")
        return value

    def node(indent: int) -> Any:
        nonlocal pos
        if lines[pos][1].startswith("- "):
            items: list[Any] = []
            while pos < len(lines) and lines[pos][0] == indent and lines[pos][1].startswith("- "):
                rest = lines[pos][1][2:].strip()
                if re.match(r"^[A-Za-z_][\w-]*:(\s|$)", rest):
                    lines[pos] = (indent + 2, rest)  # "- key: value" opens a mapping
                    items.append(node(indent + 2))
                else:
                    items.append(scalar(rest))
                    pos += 1
            return items
        mapping: dict[str, Any] = {}
        while pos < len(lines) and lines[pos][0] == indent:
            key, colon, value = lines[pos][1].partition(":")
            if not colon or not re.match(r"^[A-Za-z_][\w-]*$", key):
                raise ValueError(f"not a mapping entry: {lines[pos][1]}")
            if key in mapping:
                raise ValueError(f"duplicate key {key}")
            pos += 1
            if value.strip():
                mapping[key] = scalar(value)
            elif pos < len(lines) and (
                lines[pos][0] > indent
                or (lines[pos][0] == indent and lines[pos][1].startswith("- "))
            ):
                mapping[key] = node(lines[pos][0])
            else:
                mapping[key] = None
        return mapping

    result = node(lines[0][0])
    if pos != len(lines):
        raise ValueError(f"unparsed from line: {lines[pos][1]}")
    return result


def balanced(expr: str) -> bool:
    depth = {"(": 0, "{": 0, "[": 0}
    closing = {")": "(", "}": "{", "]": "["}
    for ch in re.sub(r'"[^"]*"', "", expr):
        if ch in depth:
            depth[ch] += 1
        elif ch in closing:
            depth[closing[ch]] -= 1
            if depth[closing[ch]] < 0:
                return False
    return not any(depth.values())


def rules() -> list[dict[str, Any]]:
    data = load_yaml_subset(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_the_rule_file_passes_promtool_or_a_structural_check() -> None:
    promtool = shutil.which("promtool")
    if promtool is not None:
        result = subprocess.run(
            [promtool, "check", "rules", str(RULES)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout + result.stderr
        # and they fire when they should (contrib/prometheus/alerts_test.yml)
        result = subprocess.run(
            [promtool, "test", "rules", "alerts_test.yml"],
            cwd=RULES.parent,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    # Parsed in any case: the structure promtool accepts, and what the rules must cover.
    found = rules()
    names = [r["alert"] for r in found]
    assert len(names) == len(set(names))
    for rule in found:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert balanced(rule["expr"]), rule["expr"]
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["for"]
    for condition, alert in REQUIRED_ALERTS.items():
        assert alert in names, condition


def test_the_subset_reader_refuses_what_it_cannot_read() -> None:
    assert load_yaml_subset('a:\n  - b: c\n    d: "e: f"\n') == {"a": [{"b": "c", "d": "e: f"}]}
    for bad in ("a: [1, 2]\n", "a: b\na: c\n", "a:\n  b: c\n d: e\n", "- a\nb: c\n"):
        try:
            load_yaml_subset(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")


def test_the_dashboard_is_a_grafana_dashboard_over_prometheus() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "killswitch"
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["type"] == "prometheus"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert balanced(target["expr"]), target["expr"]


def exported_names(tmp_path: Path) -> set[str]:
    """Every series name the daemon's /metrics shows, Kafka input included, from the daemon's
    own composition root (nothing started: names do not depend on a connection)."""
    config = tmp_path / "killswitch.toml"
    config.write_text(
        f"""
state_dir = "{tmp_path / "state"}"
[[accounts]]
venue = "binance"
name = "mm-1"
rest_url = "http://127.0.0.1:9"
ws_url = "ws://127.0.0.1:9/ws-api/v3"
api_key = "k"
api_secret = "s"
[kafka]
bootstrap_servers = "127.0.0.1:9"
[metrics]
enabled = true
port = 0
[control]
socket_path = "{tmp_path / "control.sock"}"
"""
    )
    services = build_services(load_settings(config), CriticalTasks())
    [metrics] = [s.metrics for s in services if isinstance(s, MetricsService)]
    text = generate_latest(metrics.registry).decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


async def test_every_metric_the_rules_and_the_dashboard_name_is_exported(tmp_path: Path) -> None:
    exported = exported_names(tmp_path)
    assert "killswitch_account_ready" in exported
    named_in_rules = {m for r in rules() for m in METRIC.findall(r["expr"])}
    dashboard = json.loads(DASHBOARD.read_text())
    named_in_dashboard = {
        m for p in dashboard["panels"] for t in p["targets"] for m in METRIC.findall(t["expr"])
    }
    assert named_in_rules
    assert named_in_dashboard
    assert named_in_rules - exported == set()
    assert named_in_dashboard - exported == set()
    others = {m for r in rules() for m in re.findall(r"\b([a-z_]+)\{", r["expr"])}
    assert others - exported - SCRAPE_SERIES == set()
