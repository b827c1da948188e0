"""`pre-commit run --all-files` passes offline with the local hooks, and changes nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.release.tools import ROOT, tool, tool_env

EXPECTED_HOOKS = {
    "ruff",
    "ruff-format",
    "buf-lint",
    "yamllint",
    "hadolint",
    "detect-secrets",
    "codespell",
    "commitizen",
}


def _git_status() -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_only_local_hooks_from_the_dev_install() -> None:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    repos = config["repos"]
    assert [r["repo"] for r in repos] == ["local"]
    hooks = {h["id"]: h for h in repos[0]["hooks"]}
    assert set(hooks) >= EXPECTED_HOOKS
    for hook in hooks.values():
        assert hook["language"] == "system", hook["id"]
        assert hook["entry"].startswith(".venv/bin/"), hook["id"]
        assert (ROOT / hook["entry"].split()[0]).exists(), hook["entry"]
    assert hooks["commitizen"]["stages"] == ["commit-msg"]


def test_pre_commit_run_all_files(tmp_path: Path) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("pre-commit needs the git work tree")
    before = _git_status()
    result = subprocess.run(
        [tool("pre-commit"), "run", "--all-files", "--show-diff-on-failure", "--color=never"],
        cwd=ROOT,
        env=tool_env(PRE_COMMIT_HOME=str(tmp_path / "pre-commit-home")),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert _git_status() == before, "a hook changed files"


def test_commit_message_hook(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_text("feat(release): wheels, changelog and workflows\n")
    bad = tmp_path / "bad"
    bad.write_text("added some stuff\n")
    cz = tool("cz")
    ok = subprocess.run(
        [cz, "check", "--commit-msg-file", str(good)], cwd=ROOT, capture_output=True, check=False
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    ko = subprocess.run(
        [cz, "check", "--commit-msg-file", str(bad)], cwd=ROOT, capture_output=True, check=False
    )
    assert ko.returncode != 0
