"""Opaque credentials: format per kind, the checksum that rejects malformed values before
any storage lookup, the SHA-256 storage digest and the peppered secret hash."""

from __future__ import annotations

import hashlib
import re
import string

import pytest

from tokenservice_server.domain import credentials
from tokenservice_server.domain.credentials import (
    CredentialKind,
    SecretHasher,
    digest,
    is_well_formed,
    new_credential,
)

_BODY_ALPHABET = string.ascii_letters + string.digits + "-_"
_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
# Every character a mutation may put in: the token alphabets, base64 and URL
# punctuation, whitespace, control characters and non-ASCII look-alikes.
_MUTATIONS = sorted(set(_BODY_ALPHABET + _BASE62 + "+/=.~ \t\n\x00\x7fé€ßＡ"))
_KINDS = list(CredentialKind)


@pytest.mark.parametrize("kind", _KINDS)
def test_new_credential_has_prefix_body_and_checksum(kind: CredentialKind) -> None:
    value = new_credential(kind)

    pattern = rf"{kind.value}_[A-Za-z0-9_-]{{43}}[0-9A-Za-z]{{6}}"
    assert re.fullmatch(pattern, value), value
    assert len(value) == 54
    assert is_well_formed(value, kind)


def test_prefixes_are_the_documented_ones() -> None:
    assert {kind: kind.value for kind in CredentialKind} == {
        CredentialKind.ACCESS_TOKEN: "tsat",
        CredentialKind.REFRESH_TOKEN: "tsrt",
        CredentialKind.AUTHORIZATION_CODE: "tsac",
        CredentialKind.CLIENT_SECRET: "tscs",
    }


@pytest.mark.parametrize("kind", _KINDS)
def test_a_credential_of_one_kind_is_not_well_formed_as_another(kind: CredentialKind) -> None:
    value = new_credential(kind)
    for other in CredentialKind:
        assert is_well_formed(value, other) is (other is kind)


def test_credentials_carry_256_random_bits() -> None:
    values = {new_credential(CredentialKind.ACCESS_TOKEN) for _ in range(2000)}
    assert len(values) == 2000
    # 43 base64url characters are 258 bits of which 256 are random: the last body
    # character carries 4 random bits, so it takes only 16 of the 64 values.
    bodies = [value[5:48] for value in values]
    for position in range(42):
        assert len({body[position] for body in bodies}) == 64, position
    assert len({body[42] for body in bodies}) == 16


@pytest.mark.parametrize("kind", _KINDS)
def test_every_single_character_substitution_is_rejected(kind: CredentialKind) -> None:
    for _ in range(5):
        value = new_credential(kind)
        for index, original in enumerate(value):
            for replacement in _MUTATIONS:
                if replacement == original:
                    continue
                mutated = value[:index] + replacement + value[index + 1 :]
                assert is_well_formed(mutated, kind) is False, (index, replacement, mutated)


def test_every_deletion_insertion_and_truncation_is_rejected() -> None:
    kind = CredentialKind.ACCESS_TOKEN
    value = new_credential(kind)
    for index in range(len(value)):
        assert not is_well_formed(value[:index] + value[index + 1 :], kind)
        assert not is_well_formed(value[:index], kind)
        for inserted in "aZ0-_":
            assert not is_well_formed(value[:index] + inserted + value[index:], kind)
    assert not is_well_formed(value + "a", kind)
    assert not is_well_formed(" " + value, kind)
    assert not is_well_formed(value + "\n", kind)


def test_adjacent_transpositions_are_rejected() -> None:
    kind = CredentialKind.ACCESS_TOKEN
    for _ in range(20):
        value = new_credential(kind)
        for index in range(len(value) - 1):
            swapped = value[:index] + value[index + 1] + value[index] + value[index + 2 :]
            if swapped != value:
                assert not is_well_formed(swapped, kind), (index, swapped)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "tsat_",
        "tsat" + "_" * 50,
        "TSAT_" + "A" * 49,
        "tsat-" + "A" * 49,
        "Bearer tsat_" + "A" * 42,
        "tsat_" + "A" * 49,  # right shape, wrong checksum
        "tsat_" + "=" * 43 + "000000",
        "tsat_" + "+/" * 21 + "A" + "000000",
    ],
)
def test_obviously_malformed_values_are_rejected(value: str) -> None:
    assert is_well_formed(value, CredentialKind.ACCESS_TOKEN) is False


def test_checksum_covers_the_prefix_and_body_not_only_the_body() -> None:
    access = new_credential(CredentialKind.ACCESS_TOKEN)
    relabelled = "tsrt" + access[4:]
    assert not is_well_formed(relabelled, CredentialKind.REFRESH_TOKEN)


def test_digest_is_sha256_hex() -> None:
    value = new_credential(CredentialKind.ACCESS_TOKEN)
    assert digest(value) == hashlib.sha256(value.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", digest(value))
    assert digest(value) != digest(new_credential(CredentialKind.ACCESS_TOKEN))
    assert digest("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_secret_hasher_verifies_only_the_right_secret() -> None:
    hasher = SecretHasher(b"pepper-0123456789abcdef0123456789")
    secret = new_credential(CredentialKind.CLIENT_SECRET)
    stored = hasher.hash(secret)

    assert re.fullmatch(r"hs256:[0-9a-f]{64}", stored)
    assert secret not in stored
    assert hasher.hash(secret) == stored  # deterministic: verifiable without a salt lookup
    assert hasher.verify(secret, stored) is True
    assert hasher.verify(new_credential(CredentialKind.CLIENT_SECRET), stored) is False
    assert hasher.verify(secret[:-1], stored) is False
    assert hasher.verify("", stored) is False
    assert hasher.verify(secret + "x", stored) is False
    # Caller-supplied input of any shape is answered, not raised on.
    assert hasher.verify("sécret\x00€", stored) is False
    assert hasher.verify(secret, "") is False
    assert hasher.verify(secret, stored.upper()) is False


def test_secret_hasher_is_keyed_by_the_pepper() -> None:
    secret = new_credential(CredentialKind.CLIENT_SECRET)
    one = SecretHasher(b"pepper-one-0123456789abcdef012345")
    two = SecretHasher(b"pepper-two-0123456789abcdef012345")

    assert one.hash(secret) != two.hash(secret)
    assert one.verify(secret, two.hash(secret)) is False
    assert two.verify(secret, one.hash(secret)) is False
    # Not a plain SHA-256 of the secret: a database copy alone cannot confirm a guess.
    assert one.hash(secret).removeprefix("hs256:") != digest(secret)


# -- pepper rotation -----------------------------------------------------------------------


def test_hasher_accepts_previous_peppers_and_tells_which_hashes_are_current() -> None:
    from tokenservice_server.domain.credentials import SecretHasher

    old, new = SecretHasher(b"a" * 32), SecretHasher(b"b" * 32, previous=[b"a" * 32])
    secret = "tscs_example"
    stored = old.hash(secret)
    assert new.verify(secret, stored)
    assert not new.is_current(secret, stored)
    assert new.is_current(secret, new.hash(secret))
    assert not new.verify("tscs_other", stored)
    assert not SecretHasher(b"b" * 32).verify(secret, stored)
    reported: list[tuple[str, str, str]] = []
    new.on_outdated = lambda *args: reported.append(args)
    new.check_current("c1", secret, new.hash(secret))
    assert reported == []
    new.check_current("c1", secret, stored)
    assert reported == [("c1", stored, secret)]


def test_a_digest_found_well_formed_is_not_checked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(credentials, "_WELL_FORMED", {})
    checked: list[str] = []
    real = credentials.is_well_formed

    def counting(value: str, kind: CredentialKind) -> bool:
        checked.append(value)
        return real(value, kind)

    monkeypatch.setattr(credentials, "is_well_formed", counting)
    token = new_credential(CredentialKind.ACCESS_TOKEN)
    bad = token[:-1] + ("1" if token.endswith("0") else "0")  # checksum off

    answers = [
        credentials.is_well_formed_known(value, CredentialKind.ACCESS_TOKEN, digest(value))
        for value in (token, token, bad, bad)
    ]
    refresh = credentials.is_well_formed_known(token, CredentialKind.REFRESH_TOKEN, digest(token))

    assert answers == [True, True, False, False]
    assert refresh is False  # remembered for its own kind only
    assert checked == [token, bad, bad, token]  # the malformed one is never remembered


def test_the_well_formed_digests_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(credentials, "_WELL_FORMED", {})
    monkeypatch.setattr(credentials, "_WELL_FORMED_MAX", 3)
    for _ in range(5):
        token = new_credential(CredentialKind.ACCESS_TOKEN)
        assert credentials.is_well_formed_known(token, CredentialKind.ACCESS_TOKEN, digest(token))

    assert len(credentials._WELL_FORMED) == 3
