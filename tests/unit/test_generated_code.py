"""The committed stubs in clients/python match proto/, and the contracts are documented.

Regenerates with scripts/gen_protos.py (the code `make gen` runs) into a temporary
directory and compares bytes, so editing a proto without `make gen` fails here.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2

from tokenservice.v1 import (
    cache_service_pb2,
    client_registry_pb2,
    errors_pb2,
    token_service_pb2,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _load_gen_protos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_protos", REPO_ROOT / "scripts/gen_protos.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_protos = _load_gen_protos()


def test_committed_stubs_match_protos(tmp_path: Path) -> None:
    gen_protos.generate(tmp_path)

    problems = gen_protos.diff_trees(tmp_path, gen_protos.CLIENT_ROOT)

    assert problems == [], "generated code drifted from proto/: run `make gen`"


def test_every_proto_has_its_stubs_committed() -> None:
    committed = {p.name for p in gen_protos.generated_files(gen_protos.CLIENT_ROOT)}
    stems = [Path(p).stem for p in gen_protos.proto_files()]

    assert sorted(stems) == ["cache_service", "client_registry", "errors", "token_service"]
    for stem in stems:
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"):
            assert stem + suffix in committed


def test_generation_is_byte_identical_and_removes_stale_files(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    package = second / "tokenservice" / "v1"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""hand-written"""\n')
    (package / "removed_service_pb2.py").write_text("# from a deleted proto\n")
    (package / "removed_service_pb2_grpc.pyi").write_text("# from a deleted proto\n")

    gen_protos.generate(first)
    gen_protos.generate(second)

    assert gen_protos.diff_trees(first, second) == []
    assert not (package / "removed_service_pb2.py").exists()
    assert not (package / "removed_service_pb2_grpc.pyi").exists()
    assert (package / "__init__.py").read_text() == '"""hand-written"""\n'


def test_check_mode_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gen_protos.generate(tmp_path)
    edited = tmp_path / "tokenservice" / "v1" / "cache_service_pb2.pyi"
    edited.write_bytes(edited.read_bytes() + b"# hand edit\n")

    assert gen_protos.main(["--check", "--out", str(tmp_path)]) == 1
    assert "differs: tokenservice/v1/cache_service_pb2.pyi" in capsys.readouterr().err


# --- documentation and naming rules over the protos themselves ----------------------

# Field numbers inside descriptor.proto, as used in SourceCodeInfo.Location.path.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM, _MESSAGE_ONEOF = 2, 3, 4, 8
_ENUM_VALUE = 2
_SERVICE_METHOD = 2


@pytest.fixture(scope="module")
def descriptor_set(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorSet:
    out = tmp_path_factory.mktemp("descriptors") / "tokenservice.binpb"
    gen_protos.build_descriptor_set(out)
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _elements(
    file: descriptor_pb2.FileDescriptorProto,
) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Yield (full name, source path) of every service, RPC, message, field, enum, value."""

    def enum(
        e: descriptor_pb2.EnumDescriptorProto, prefix: str, path: tuple[int, ...]
    ) -> Iterator[tuple[str, tuple[int, ...]]]:
        yield f"{prefix}{e.name}", path
        for i, value in enumerate(e.value):
            yield f"{prefix}{e.name}.{value.name}", (*path, _ENUM_VALUE, i)

    def message(
        m: descriptor_pb2.DescriptorProto, prefix: str, path: tuple[int, ...]
    ) -> Iterator[tuple[str, tuple[int, ...]]]:
        name = f"{prefix}{m.name}"
        if not m.options.map_entry:  # synthesized for map<,> fields: no source of its own
            yield name, path
        for i, field in enumerate(m.field):
            yield f"{name}.{field.name}", (*path, _MESSAGE_FIELD, i)
        for i, oneof in enumerate(m.oneof_decl):
            if not oneof.name.startswith("_"):  # synthesized for proto3 `optional`
                yield f"{name}.{oneof.name}", (*path, _MESSAGE_ONEOF, i)
        for i, nested in enumerate(m.nested_type):
            if not nested.options.map_entry:
                yield from message(nested, f"{name}.", (*path, _MESSAGE_NESTED, i))
        for i, e in enumerate(m.enum_type):
            yield from enum(e, f"{name}.", (*path, _MESSAGE_ENUM, i))

    for i, m in enumerate(file.message_type):
        yield from message(m, "", (_FILE_MESSAGE, i))
    for i, e in enumerate(file.enum_type):
        yield from enum(e, "", (_FILE_ENUM, i))
    for i, s in enumerate(file.service):
        yield s.name, (_FILE_SERVICE, i)
        for j, method in enumerate(s.method):
            yield f"{s.name}.{method.name}", (_FILE_SERVICE, i, _SERVICE_METHOD, j)


def test_every_rpc_field_and_enum_value_has_a_leading_comment(
    descriptor_set: descriptor_pb2.FileDescriptorSet,
) -> None:
    undocumented = []
    checked = 0
    for file in descriptor_set.file:
        if not file.name.startswith("tokenservice/"):
            continue
        comments = {
            tuple(loc.path): loc.leading_comments.strip() for loc in file.source_code_info.location
        }
        for name, path in _elements(file):
            checked += 1
            if not comments.get(path):
                undocumented.append(f"{file.name}: {name}")

    assert checked > 200  # the walk really covered the contracts
    assert undocumented == []


def _enums(
    descriptor_set: descriptor_pb2.FileDescriptorSet,
) -> Iterator[descriptor_pb2.EnumDescriptorProto]:
    def nested(m: descriptor_pb2.DescriptorProto) -> Iterator[descriptor_pb2.EnumDescriptorProto]:
        yield from m.enum_type
        for child in m.nested_type:
            yield from nested(child)

    for file in descriptor_set.file:
        if file.name.startswith("tokenservice/"):
            yield from file.enum_type
            for m in file.message_type:
                yield from nested(m)


def test_every_enum_starts_with_a_prefixed_unspecified_zero_value(
    descriptor_set: descriptor_pb2.FileDescriptorSet,
) -> None:
    enums = list(_enums(descriptor_set))

    assert len(enums) >= 6
    for enum in enums:
        prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper()
        assert enum.value[0].number == 0, enum.name
        assert enum.value[0].name == f"{prefix}_UNSPECIFIED", enum.name
        assert all(v.name.startswith(f"{prefix}_") for v in enum.value), enum.name


# --- the generated modules are the contract callers import --------------------------


def test_services_expose_the_specified_rpcs() -> None:
    def rpcs(module: ModuleType, service: str) -> list[str]:
        return [m.name for m in module.DESCRIPTOR.services_by_name[service].methods]

    assert rpcs(token_service_pb2, "TokenService") == [
        "IssueToken",
        "Authorize",
        "IntrospectToken",
        "RevokeToken",
        "CreateSession",
        "GetSession",
        "ExtendSession",
        "EndSession",
        "RevokeTokens",
        "GetTokenStats",
    ]
    assert rpcs(client_registry_pb2, "ClientRegistry") == [
        "CreateClient",
        "GetClient",
        "ListClients",
        "UpdateClient",
        "DeleteClient",
        "RotateClientSecret",
    ]
    assert rpcs(cache_service_pb2, "CacheService") == [
        "GetValue",
        "SetValue",
        "DeleteValue",
        "BatchGetValues",
        "BatchSetValues",
        "InvalidateNamespace",
        "GetNamespaceStats",
    ]


def test_error_reasons_cover_oauth2_and_service_failures() -> None:
    values = errors_pb2.ErrorReason.DESCRIPTOR.values
    reasons = {v.name.removeprefix("ERROR_REASON_") for v in values} - {"UNSPECIFIED"}

    # RFC 6749 section 5.2 token endpoint errors, plus access_denied (section 4.1.2.1).
    oauth2 = {
        "INVALID_REQUEST",
        "INVALID_CLIENT",
        "INVALID_GRANT",
        "UNAUTHORIZED_CLIENT",
        "UNSUPPORTED_GRANT_TYPE",
        "INVALID_SCOPE",
        "ACCESS_DENIED",
    }
    service = {
        "RATE_LIMITED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "INVALID_TOKEN",
        "VALUE_TOO_LARGE",
        "NAMESPACE_FULL",
        "BACKEND_UNAVAILABLE",
    }
    assert oauth2 | service <= reasons


def test_list_and_update_follow_aip_shapes() -> None:
    list_request = client_registry_pb2.ListClientsRequest.DESCRIPTOR.fields_by_name
    list_response = client_registry_pb2.ListClientsResponse.DESCRIPTOR.fields_by_name
    update_request = client_registry_pb2.UpdateClientRequest.DESCRIPTOR.fields_by_name

    assert {"page_size", "page_token"} <= set(list_request)
    assert "next_page_token" in list_response
    update_mask = update_request["update_mask"].message_type
    assert update_mask is not None
    assert update_mask.full_name == "google.protobuf.FieldMask"
