"""The README's grpcurl walkthrough works as written, against `tokenservice serve` on
its embedded Valkey (what `make run` starts)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.harness.docs_runner import markdown_block, run_against_serve

README = Path(__file__).resolve().parents[2] / "README.md"


def _block(marker: str) -> str:
    return markdown_block(README, marker)


async def test_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    result = await run_against_serve(
        _block("quickstart") + _block("quickstart-more"), tmp_path / "var"
    )
    output = result.output
    assert result.returncode == 0, result.errors + output
    assert '"token_type": "Bearer"' in output
    assert '"scope": "recipes:read"' in output
    assert re.search(r'"access_token": "tsat_[A-Za-z0-9_-]{49}"', output)
    assert '"client_id": "tokenservice-admin"' in output  # ListClients
    assert '"previous_secret_expire_time"' in output  # RotateClientSecret with grace
    assert '"revoked_token_count": "1"' in output  # DeleteClient revoked step 3's token
