"""Versions come from conventional commits (commitizen); one version across both wheels."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

from tests.release.tools import ROOT, tool, tool_env

VERSIONED = [
    "pyproject.toml",
    "clients/python/pyproject.toml",
    "service/tokenservice_server/__init__.py",
    "Dockerfile",
    "deploy/base/kustomization.yaml",
]


def _versions(root: Path) -> dict[str, str]:
    server = tomllib.loads((root / "pyproject.toml").read_text())
    client = tomllib.loads((root / "clients/python/pyproject.toml").read_text())
    init = (root / "service/tokenservice_server/__init__.py").read_text()
    dockerfile = (root / "Dockerfile").read_text()
    kustomization = (root / "deploy/base/kustomization.yaml").read_text()
    pin = next(d for d in server["project"]["dependencies"] if d.startswith("tokenservice-client"))

    def search(pattern: str, text: str) -> str:
        match = re.search(pattern, text, re.MULTILINE)
        assert match, pattern
        return match.group(1)

    return {
        "server": server["project"]["version"],
        "client": client["project"]["version"],
        "client pin": pin.removeprefix("tokenservice-client=="),
        "__version__": search(r'^__version__ = "([^"]+)"', init),
        "image label": search(r"^ARG VERSION=(\S+)", dockerfile),
        "image tag": search(r"^\s*newTag: (\S+)", kustomization),
    }


def test_one_version_everywhere() -> None:
    versions = _versions(ROOT)
    assert len(set(versions.values())) == 1, versions


def test_changelog_is_generated() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(r"^## (Unreleased|v\d+\.\d+\.\d+)", text, re.MULTILINE)
    assert "### Feat" in text


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_bump_updates_every_version_and_the_changelog(tmp_path: Path) -> None:
    """A real `cz bump` on a copy: a feat after the last tag is a minor bump (0.x)."""
    repo = tmp_path / "repo"
    for rel in [*VERSIONED, "CHANGELOG.md"]:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, repo / rel)
    current = _versions(repo)["server"]
    major, minor, _patch = (int(p) for p in current.split("."))
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "chore: release base")
    _git(repo, "tag", f"v{current}")
    (repo / "NEW").write_text("x\n")
    _git(repo, "add", "NEW")
    _git(repo, "commit", "-q", "-m", "feat(api): a new thing")
    (repo / "NEW").write_text("y\n")
    _git(repo, "commit", "-q", "-am", "fix: a fixed thing")

    env = tool_env(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid")
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    new = f"{major}.{minor + 1}.0"  # major_version_zero: a feat bumps the minor while 0.x
    nxt = subprocess.run(
        [tool("cz"), "bump", "--get-next", "--yes"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert nxt.stdout.strip() == new, nxt.stdout + nxt.stderr
    bump = subprocess.run(
        [tool("cz"), "bump", "--yes"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert bump.returncode == 0, bump.stdout + bump.stderr
    assert set(_versions(repo).values()) == {new}, _versions(repo)
    assert f"v{new}" in _git(repo, "tag", "--list")
    changelog = (repo / "CHANGELOG.md").read_text()
    assert changelog.startswith(f"## v{new}")
    assert "**api**: a new thing" in changelog
    assert "a fixed thing" in changelog


def test_release_dry_run_prints_next_version_and_changes_nothing() -> None:
    before = {rel: (ROOT / rel).read_bytes() for rel in [*VERSIONED, "CHANGELOG.md"]}
    result = subprocess.run(
        ["make", "-s", "release-dry-run"],
        cwd=ROOT,
        env=tool_env(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^next version: \d+\.\d+\.\d+$", result.stdout, re.MULTILINE), result.stdout
    assert re.search(r"^bump: version \S+ → \S+", result.stdout, re.MULTILINE), result.stdout
    assert {rel: (ROOT / rel).read_bytes() for rel in before} == before
