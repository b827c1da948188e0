"""docs/oauth2.md works as written: its ``oauth2-*`` shell blocks run in order, in one
shell, against `tokenservice serve` on its embedded Valkey (what `make run` starts)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from tests.harness.docs_runner import run_against_serve

DOC = Path(__file__).resolve().parents[2] / "docs" / "oauth2.md"
BLOCKS = (
    "setup",
    "code",
    "public",
    "refresh",
    "reuse",
    "introspect",
    "revoke",
    "sessions",
    "operators",
)


def _blocks() -> list[tuple[str, str]]:
    text = DOC.read_text(encoding="utf-8")
    found = re.findall(r"<!-- oauth2-([a-z]+):[^>]*-->\n```sh\n(.*?)```", text, re.DOTALL)
    return [(name, body) for name, body in found]


def _json_objects(output: str) -> list[dict[str, object]]:
    """Every top-level JSON object grpcurl printed, in order."""
    decoder, objects, position = json.JSONDecoder(), [], 0
    while (start := output.find("{", position)) >= 0:
        if start > 0 and output[start - 1] not in "\n":
            position = start + 1
            continue
        try:
            value, position = decoder.raw_decode(output, start)
        except json.JSONDecodeError:
            position = start + 1
            continue
        objects.append(value)
    return objects


def test_every_block_is_marked_and_in_order() -> None:
    assert tuple(name for name, _ in _blocks()) == BLOCKS
    # No unmarked shell block that a reader would expect to work.
    assert DOC.read_text(encoding="utf-8").count("```sh") == len(BLOCKS)


def test_the_openssl_alternative_computes_the_same_challenge() -> None:
    """The openssl one-liner in the PKCE comment, on RFC 7636 Appendix B's vector."""
    (line,) = re.findall(r"with openssl: (.*)\)\n", DOC.read_text(encoding="utf-8"))
    result = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + line],
        env={**os.environ, "VERIFIER": "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


async def test_the_grant_flows_run_as_written(tmp_path: Path) -> None:
    result = await run_against_serve("".join(body for _, body in _blocks()), tmp_path / "var")
    output = result.output
    assert result.returncode == 0, result.errors + output
    objects = _json_objects(output)

    authorized, tokens, rotated = objects[0], objects[1], objects[2]
    # oauth2-code: Authorize, then the token response.
    assert re.fullmatch(r"tsac_[A-Za-z0-9_-]{49}", str(authorized["code"]))
    assert authorized["expires_in"] == 600
    assert authorized["state"] == "af0ifjsldkj"
    assert re.fullmatch(r"tsat_[A-Za-z0-9_-]{49}", str(tokens["access_token"]))
    assert re.fullmatch(r"tsrt_[A-Za-z0-9_-]{49}", str(tokens["refresh_token"]))
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 900
    assert tokens["refresh_token_expires_in"] == 604800
    assert tokens["scope"] == "orders:read profile"
    assert re.fullmatch(r"[0-9a-f]{32}", str(tokens["grant_id"]))
    # oauth2-public prints the public client's scope; oauth2-refresh rotates.
    assert "\norders:read\n" in output
    assert rotated["grant_id"] == tokens["grant_id"]
    assert rotated["scope"] == "orders:read"
    assert rotated["refresh_token"] != tokens["refresh_token"]
    # oauth2-reuse: refused, reported, and the family is dead.
    assert "Code: InvalidArgument" in output
    assert "the refresh token was already used; its grant is revoked" in output
    assert '"reason":"INVALID_GRANT"' in output
    after_reuse = output[output.index("exit status 67\n") :]
    assert _json_objects(after_reuse)[0] == {}  # the newest refresh token is inactive
    # oauth2-introspect
    (active,) = [o for o in objects if o.get("active") is True]
    assert active["client_id"] == "webapp"
    assert active["sub"] == active["username"] == "alice"
    assert active["scope"] == "orders:read orders:write profile"
    assert active["token_type"] == "Bearer"
    assert active["token_kind"] == "TOKEN_KIND_ACCESS_TOKEN"
    assert active["iss"] == "tokenservice"
    assert int(str(active["exp"])) - int(str(active["iat"])) == 900
    assert active["nbf"] == active["iat"]
    # oauth2-revoke: three empty answers; oauth2-sessions: the session, extended, ended.
    sessions = [o["session"] for o in objects if "session" in o]
    assert len(sessions) == 2
    got, extended = sessions
    assert isinstance(got, dict)
    assert isinstance(extended, dict)
    assert got["subject"] == "alice"
    assert got["client_id"] == "webapp"
    assert got["attributes"] == {"ip": "203.0.113.7", "user_agent": "Firefox/140"}
    assert str(got["session_id"]).startswith("ses_")
    assert extended["expire_time"] > got["expire_time"]
    assert f"\n{got['session_id']}\n" in output  # the token response's session_id
    assert {"revoked_token_count": "2"} in objects  # EndSession
    # oauth2-operators: RevokeTokens, then the statistics.
    assert objects[-2] == {"revoked_token_count": "3"}
    assert objects[-1] == {
        "active_access_tokens": "3",
        "access_tokens_issued_total": "9",
        "refresh_tokens_issued_total": "6",
        "authorization_codes_issued_total": "4",
        "access_tokens_revoked_total": "6",
        "refresh_tokens_revoked_total": "4",
        "introspections_total": "4",
        "refresh_token_reuse_total": "1",
    }
