"""The PrometheusRule in deploy/monitoring/: promtool accepts it, every alert fires on a
synthetic series showing its condition and stays quiet on a healthy one, every alert
links to its runbook section, and the dashboard reads only metrics that exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.monitoring.alert_cases import CASES, AlertCase
from tests.monitoring.support import (
    RUNBOOK,
    alerts,
    binary,
    dashboard,
    dashboard_exprs,
    metric_names,
    write_plain_rules,
)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    rules = write_plain_rules(tmp_path / "rules.yaml")
    result = _promtool("check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_there_are_at_least_20_alerts_each_with_a_runbook_section() -> None:
    rules = alerts()
    assert len(rules) >= 20
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    runbook = RUNBOOK.read_text(encoding="utf-8")
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in runbook.splitlines()
        if line.startswith("#")
    }
    for rule in rules:
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook_url"} <= set(annotations), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        anchor = rule["alert"].lower()
        assert annotations["runbook_url"] == f"docs/runbook.md#{anchor}"
        assert anchor in headings, f"docs/runbook.md has no section for {rule['alert']}"


def _series(values: dict[str, str]) -> list[dict[str, str]]:
    return [{"series": series, "values": expanding} for series, expanding in values.items()]


def _unit_tests(cases: list[AlertCase], rules: Path, interval: str) -> dict[str, Any]:
    by_name = {rule["alert"]: rule for rule in alerts()}
    tests: list[dict[str, Any]] = []
    for case in cases:
        rule = by_name[case.alert]
        labels = {"severity": rule["labels"]["severity"], **case.labels}
        tests.append(
            {
                "name": f"{case.alert} fires",
                "interval": case.interval,
                "input_series": _series(case.firing),
                "alert_rule_test": [
                    {
                        "eval_time": case.at,
                        "alertname": case.alert,
                        "exp_alerts": [
                            {"exp_labels": labels, "exp_annotations": rule["annotations"]}
                        ],
                    }
                ],
            }
        )
        tests.append(
            {
                "name": f"{case.alert} stays quiet",
                "interval": case.interval,
                "input_series": _series(case.healthy),
                "alert_rule_test": [
                    {"eval_time": case.at, "alertname": case.alert, "exp_alerts": []}
                ],
            }
        )
    return {"rule_files": [rules.name], "evaluation_interval": interval, "tests": tests}


def test_every_alert_has_a_firing_and_a_healthy_case() -> None:
    assert sorted(case.alert for case in CASES) == sorted(rule["alert"] for rule in alerts())


def test_each_alert_fires_on_its_condition_and_not_on_a_healthy_series(tmp_path: Path) -> None:
    rules = write_plain_rules(tmp_path / "rules.yaml")
    # One file per evaluation step: promtool evaluates every rule at every step up to
    # the last eval_time, so a 27 h case at 1 m steps alone would take seconds.
    files = []
    for interval in sorted({case.interval for case in CASES}):
        unit = tmp_path / f"rules_test_{interval}.yaml"
        cases = [case for case in CASES if case.interval == interval]
        unit.write_text(yaml.safe_dump(_unit_tests(cases, rules, interval), sort_keys=False))
        files.append(str(unit))
    result = _promtool("test", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_dashboard_reads_metrics_the_rules_and_service_define() -> None:
    document = dashboard()
    assert document["uid"] == "tokenservice"
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    names = set().union(*(metric_names(expr) for expr in exprs))
    # The dashboard covers each family the issue names.
    for family in (
        "grpc_server_handled_total",
        "grpc_server_handling_seconds_bucket",
        "tokenservice_check_total",
        "tokenservice_tokens_issued_total",
        "tokenservice_cache_requests_total",
        "tokenservice_redis_command_duration_seconds_bucket",
        "tokenservice_redis_command_errors_total",
        "tokenservice_redis_failovers_total",
        "tokenservice_redis_pool_connections",
        "tokenservice_build_info",
    ):
        assert family in names, family
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids))
