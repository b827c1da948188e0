"""Every domain error's reason is a documented ErrorReason with a status code mapping."""

from __future__ import annotations

from tokenservice.v1 import errors_pb2
from tokenservice_server.domain import errors
from tokenservice_server.transport.errors import STATUS_FOR_REASON


def _subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_subclasses(sub)}
    return found


def test_domain_reasons_are_in_the_contract_and_mapped() -> None:
    documented = {
        value.name.removeprefix("ERROR_REASON_")
        for value in errors_pb2.ErrorReason.DESCRIPTOR.values
    } - {"UNSPECIFIED"}
    used = {cls.reason for cls in _subclasses(errors.DomainError)}
    assert used <= documented, used - documented
    assert documented == set(STATUS_FOR_REASON), documented ^ set(STATUS_FOR_REASON)
