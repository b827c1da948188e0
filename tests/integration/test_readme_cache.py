"""The README's CacheService walkthrough works as written, after the quickstart block,
against `tokenservice serve` on its embedded Valkey (what `make run` starts)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from tests.harness.docs_runner import run_against_serve
from tests.integration.test_readme_quickstart import README, _block

README_TEXT = README.read_text(encoding="utf-8")


async def test_readme_cache_walkthrough_runs_as_written(tmp_path: Path) -> None:
    result = await run_against_serve(_block("quickstart") + _block("cache"), tmp_path / "var")
    output = result.output
    assert result.returncode == 0, result.errors + output
    popular = base64.b64encode(b"[42,7,19]").decode()
    assert f'"value": "{popular}",\n  "remaining_ttl_seconds": 300' in output
    assert "\n[42,7,19]\n" in output  # the value decoded
    assert '"value": "UmFtZW4=",\n      "remaining_ttl_seconds": 60' in output  # recipe:7
    assert '"key": "recipe:1"\n    }' in output  # a miss in the batch
    assert re.search(r'"lease_status": "LEASE_STATUS_GRANTED",\n  "lease_token": "\S+"', output)
    assert '"lease_status": "LEASE_STATUS_HELD_ELSEWHERE"' in output
    assert '"deleted": true' in output
    # The statistics exactly as the README shows them.
    shown = re.search(r"the statistics read:\n\n```json\n(.*?)```", README_TEXT, re.DOTALL)
    assert shown is not None
    assert shown.group(1) in output
    assert '"invalidated_count": "3"' in output
