"""Decoding a token's hash into its record, and the memo of records decoded lately."""

from __future__ import annotations

import pytest

from tokenservice_server.domain.tokens import TokenKind, derived_jti
from tokenservice_server.storage import token_store
from tokenservice_server.storage.token_store import decode_fields

DIGEST = "ab" * 32


def _values(expires: bytes = b"1800000900", scopes: bytes = b"orders:read") -> list[bytes]:
    # client, scopes, issued, expires, jti, subject, audiences, session, family
    return [b"svc", scopes, b"1800000000", expires, b"", b"user-1", b"orders", b"", b""]


def test_the_fields_decode_in_their_order() -> None:
    record = decode_fields("cd" * 32, _values())

    assert (record.client_id, record.scopes, record.issued_at, record.expires_at) == (
        "svc",
        frozenset({"orders:read"}),
        1_800_000_000,
        1_800_000_900,
    )
    assert (record.jti, record.subject, record.audiences) == (
        derived_jti("cd" * 32),
        "user-1",
        ("orders",),
    )
    assert (record.kind, record.rotated) == (TokenKind.ACCESS, False)


def test_the_same_values_give_the_record_decoded_before() -> None:
    first = decode_fields(DIGEST, _values())

    assert decode_fields(DIGEST, _values()) is first


@pytest.mark.parametrize(
    ("values", "kind", "rotated"),
    [
        (_values(expires=b"1800000999"), TokenKind.ACCESS, False),
        (_values(scopes=b"orders:read orders:write"), TokenKind.ACCESS, False),
        (_values(), TokenKind.REFRESH, False),
        (_values(), TokenKind.REFRESH, True),
    ],
)
def test_other_values_kind_or_state_are_decoded_afresh(
    values: list[bytes], kind: TokenKind, rotated: bool
) -> None:
    before = decode_fields(DIGEST, _values())

    record = decode_fields(DIGEST, values, kind, rotated)

    assert record is not before
    assert (record.expires_at, record.scopes, record.kind, record.rotated) == (
        int(values[3]),
        frozenset(values[1].decode().split()),
        kind,
        rotated,
    )


def test_the_memo_is_bounded_and_forgets_the_oldest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(token_store, "_DECODED", {})
    monkeypatch.setattr(token_store, "_DECODED_MAX", 3)
    oldest = decode_fields("00" * 32, _values())
    for n in range(1, 4):
        decode_fields(f"{n:02d}" * 32, _values())

    assert len(token_store._DECODED) == 3
    assert decode_fields("00" * 32, _values()) is not oldest  # forgotten, decoded again
