"""The shared connection's packer keeps the bytes of commands it packed lately."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hiredis
import pytest

from tokenservice_server.storage.shared_connection import RecentCommands


class CountingPacker:
    def __init__(self) -> None:
        self.packed: list[tuple[Any, ...]] = []

    def __call__(self, args: Sequence[Any]) -> bytes:
        command = tuple(args)
        self.packed.append(command)
        return hiredis.pack_command(command)  # type: ignore[no-any-return]


SCRIPT_CALL = ("EVALSHA", "a" * 40, 2, "auth:access_token:" + "b" * 64, "k2", 60000, 0, "", "auth")


def test_a_command_seen_lately_is_not_packed_again() -> None:
    packer = CountingPacker()
    recent = RecentCommands(packer)

    first = recent(SCRIPT_CALL)
    again = recent(list(SCRIPT_CALL))  # a pipeline's commands come as lists

    assert first == again == hiredis.pack_command(SCRIPT_CALL)
    assert packer.packed == [SCRIPT_CALL]


def test_equal_arguments_of_another_type_are_packed_as_they_are() -> None:
    """1, 1.0 and True are equal (and hash alike) in Python, but not the same bytes."""
    packer = CountingPacker()
    recent = RecentCommands(packer)

    as_int = recent(("SET", "k", 1))
    as_float = recent(("SET", "k", 1.0))

    assert (as_int, as_float) == (
        hiredis.pack_command(("SET", "k", 1)),
        hiredis.pack_command(("SET", "k", 1.0)),
    )
    assert as_int != as_float
    assert recent(("SET", "k", 1)) == as_int
    assert len(packer.packed) == 3  # the int form was replaced by the float one, then back


@pytest.mark.parametrize(
    "command",
    [
        ("SET", "k", b"a value"),  # bytes: a cache value, never hashed here
        tuple(["MSET"] + [f"k{n}" for n in range(20)]),  # more arguments than kept
        ("SET", "k", "v" * 600),  # bigger than kept
    ],
)
def test_values_long_and_big_commands_are_never_kept(command: tuple[Any, ...]) -> None:
    packer = CountingPacker()
    recent = RecentCommands(packer)

    assert recent(command) == recent(command) == hiredis.pack_command(command)
    assert len(packer.packed) == 2
    assert len(recent) == 0


def test_an_unhashable_argument_goes_to_the_packer() -> None:
    def refuse(args: Sequence[Any]) -> bytes:
        raise TypeError(f"cannot pack {args[2]!r}")

    with pytest.raises(TypeError, match="cannot pack"):
        RecentCommands(refuse)(("SET", "k", ["a", "list"]))


def test_the_oldest_command_goes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RecentCommands, "MAX_ENTRIES", 2)
    packer = CountingPacker()
    recent = RecentCommands(packer)
    for key in ("a", "b", "c"):
        recent(("GET", key))

    recent(("GET", "c"))
    recent(("GET", "a"))

    assert len(recent) == 2
    assert packer.packed == [("GET", "a"), ("GET", "b"), ("GET", "c"), ("GET", "a")]
