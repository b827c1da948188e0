"""The GitHub Actions workflows pass actionlint and call the project's make targets."""

from __future__ import annotations

import re
import subprocess

import yaml

from tests.release.tools import ROOT, tool, tool_env

WORKFLOWS = ROOT / ".github" / "workflows"


def _load(name: str) -> dict[object, object]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(data, dict)
    return data


def _steps(workflow: dict[object, object]) -> list[dict[str, object]]:
    jobs = workflow["jobs"]
    assert isinstance(jobs, dict)
    return [step for job in jobs.values() for step in job["steps"]]


def test_actionlint_passes() -> None:
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    assert {p.rsplit("/", 1)[-1] for p in files} >= {"ci.yml", "release.yml"}
    # shellcheck, when on PATH, also checks the `run:` scripts.
    result = subprocess.run(
        [tool("actionlint"), "-color=false", *files],
        cwd=ROOT,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_actions_are_pinned_by_version() -> None:
    for name in ("ci.yml", "release.yml"):
        for step in _steps(_load(name)):
            uses = step.get("uses")
            if uses is None:
                continue
            assert isinstance(uses, str)
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+(\.\d+)*", uses), f"{name}: {uses} unpinned"


def test_ci_runs_the_make_targets() -> None:
    runs = " ".join(str(s.get("run", "")) for s in _steps(_load("ci.yml")))
    for command in ("make test", "make check", "redis-server", "prometheus-alertmanager"):
        assert command in runs


def test_release_builds_wheels_image_and_manifests() -> None:
    release = _load("release.yml")
    # PyYAML reads the bare `on:` key as True.
    triggers = release.get("on", release.get(True))
    assert isinstance(triggers, dict)
    assert "workflow_dispatch" in triggers
    assert triggers["push"]["tags"] == ["v*"]
    steps = _steps(release)
    runs = " ".join(str(s.get("run", "")) for s in steps)
    uses = [str(s.get("uses", "")) for s in steps]
    assert "make wheels" in runs
    assert "kubectl kustomize" in runs
    assert any(u.startswith("docker/build-push-action@") for u in uses)
    uploads = [s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact@")]
    assert {u["with"]["name"] for u in uploads} == {"wheels", "image", "manifests"}  # type: ignore[index]
