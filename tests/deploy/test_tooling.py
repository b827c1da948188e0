"""Container image and alerting configuration lint: hadolint, amtool."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.deploy.manifests import DEPLOY, ROOT, tool

ALERTMANAGER = DEPLOY / "monitoring" / "alertmanager.yaml"


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [tool("hadolint"), str(ROOT / "Dockerfile")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_as_a_numeric_user_with_the_tokenservice_entrypoint() -> None:
    text = (ROOT / "Dockerfile").read_text()
    final_stage = text.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^USER \d+:\d+$", final_stage, re.M)
    assert 'ENTRYPOINT ["tokenservice"]' in final_stage
    assert re.search(r"^FROM python:\$\{PYTHON_VERSION\}-slim", "FROM " + final_stage, re.M)
    assert re.search(r"^ARG PYTHON_VERSION=\d+\.\d+\.\d+$", text, re.M)
    for label in ("title", "version", "source", "licenses"):
        assert f"org.opencontainers.image.{label}=" in final_stage


@pytest.fixture(scope="module")
def amtool() -> str:
    found = shutil.which("amtool")
    if found is None:
        if os.environ.get("TOKENSERVICE_TEST_REQUIRE_TLS"):  # set by .ci/run
            pytest.fail("CI must have amtool (.ci/run installs prometheus-alertmanager)")
        pytest.skip("amtool not installed (apt-get install prometheus-alertmanager)")
    return found


def test_alertmanager_config_passes_amtool(amtool: str) -> None:
    result = subprocess.run(
        [amtool, "check-config", str(ALERTMANAGER)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("severity", "receiver"), [("critical", "pager"), ("warning", "ticket")])
def test_alerts_route_by_severity(amtool: str, severity: str, receiver: str) -> None:
    result = subprocess.run(
        [amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}",
         f"severity={severity}", "alertname=TokenServiceHighLatency"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.stdout.strip() == receiver, result.stdout + result.stderr


def test_inhibition_names_real_alerts() -> None:
    """The inhibition rules name alerts by regex: each name must exist in the rules."""
    rules_file = DEPLOY / "monitoring" / "prometheus-rules.yaml"
    rules = yaml.safe_load(rules_file.read_text())
    groups = rules.get("spec", rules)["groups"]
    alerts = {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}
    config = yaml.safe_load(ALERTMANAGER.read_text())
    named = set()
    for rule in config["inhibit_rules"]:
        for matcher in [*rule["source_matchers"], *rule["target_matchers"]]:
            if not matcher.startswith("alertname"):
                continue
            pattern = matcher.split("=", 1)[1].lstrip("~ ").strip('"')
            prefix, _, alternatives = pattern.partition("(")
            if alternatives:
                named |= {prefix + name for name in alternatives.rstrip(")").split("|")}
            else:
                named |= set(pattern.split("|"))
    assert named
    assert named <= alerts, sorted(named - alerts)
    assert "TokenServiceRedisDown" in named
