"""``@value_object``: an immutable record, at the cost of a plain slotted dataclass.

The records made on every hot RPC (a token's record, the caller, a Check's request and
decision) were ``@dataclass(frozen=True)``. A frozen dataclass assigns each field through
``object.__setattr__`` in its ``__init__``; measured with callgrind, the four of a Check
cost 31,600 of its 198,600 instructions (16%). A value object is instead:

* to the type checker, a frozen dataclass (PEP 681 ``frozen_default``): assigning a field
  is an error in mypy, as before;
* at run time, a dataclass with ``__slots__`` whose ``__init__`` stores fields directly,
  hashable from its fields as a frozen one is (``unsafe_hash``), so it can still key a
  cache.

Nothing in this code base assigns a field of one after it is made (mypy strict checks
every module), and ``dataclasses.replace`` still makes a changed copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

__all__ = ["value_object"]

_T = TypeVar("_T")

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform

    @dataclass_transform(frozen_default=True)
    def value_object(cls: type[_T]) -> type[_T]: ...

else:

    def value_object(cls: type[Any]) -> type[Any]:
        return dataclass(slots=True, unsafe_hash=True)(cls)
