"""Rendering the Kustomize overlays and walking the rendered objects."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("dev", "staging", "production")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job", "CronJob")

Obj = dict[str, Any]


def tool(name: str) -> str:
    """A command from the dev install (next to this interpreter), else from PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (it is a dev dependency: make test installs it)")
    return found


@functools.cache
def render_text(overlay: str) -> str:
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(DEPLOY / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
    return result.stdout


def render(overlay: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(render_text(overlay)) if doc]


def find(objects: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [
        o
        for o in objects
        if o["kind"] == kind and (name is None or o["metadata"]["name"].startswith(name))
    ]


def one(objects: list[Obj], kind: str, name: str) -> Obj:
    """The object of that kind whose name is ``name`` (generated names carry a hash)."""
    matches = [o for o in find(objects, kind) if o["metadata"]["name"] == name]
    if not matches:
        matches = [
            o for o in find(objects, kind) if o["metadata"]["name"].rsplit("-", 1)[0] == name
        ]
    assert len(matches) == 1, f"expected one {kind} {name}, got {len(matches)}"
    return matches[0]


def pod_template(workload: Obj) -> Obj:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]
    return workload["spec"]["template"]


def workloads(objects: list[Obj]) -> Iterator[Obj]:
    return (o for o in objects if o["kind"] in WORKLOAD_KINDS)


def containers(pod_spec: Obj, *, init: bool = True) -> list[Obj]:
    found = list(pod_spec.get("containers", []))
    if init:
        found += pod_spec.get("initContainers", [])
    return found


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """Whether a matchLabels selector (no matchExpressions here) selects ``labels``."""
    assert "matchExpressions" not in selector, "extend selects() for matchExpressions"
    wanted = selector.get("matchLabels", {})
    return all(labels.get(key) == value for key, value in wanted.items())
