"""Hostile input (issue 10, item 4): property-based fuzzing of every RPC request message.

Strategies are built generically from the protobuf descriptors of every service the server
answers (TokenService, ClientRegistry, CacheService, envoy Authorization): awkward Unicode,
oversize strings and lists, arbitrary bytes, unknown enum numbers, nested and empty messages,
unknown fields and messages near the size limit, sent with an admin bearer token, a garbage
one or none. The server must never answer INTERNAL or UNKNOWN (the interceptor's safety
net), must stay healthy, and must leave Redis consistent. The number of fuzz cases run is
printed on a `[reliability] fuzz:` line and written to build/reliability/fuzz.json.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import redis
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.harness.clients import register_client
from tests.harness.grpc_server import AppFactory, Credentials, bearer, bootstrap_admin, issue_token
from tests.harness.redis_servers import RedisProcess
from tests.reliability.support import write_results
from tokenservice_server.app import SERVICES
from tokenservice_server.config import ConfigError, load_settings
from tokenservice_server.storage.client_store import decode_client

pytestmark = pytest.mark.timeout(240)

EXAMPLES_PER_RPC = 80
MAX_MESSAGE = 4 * 1024 * 1024  # the default of settings.max_message_bytes
_MAX_DEPTH = 3
# Answers that are a clean refusal or success; anything else (INTERNAL, UNKNOWN from the
# safety net, UNAVAILABLE or DEADLINE_EXCEEDED with Redis up) is a finding.
_CLEAN = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.ABORTED,
}

AWKWARD = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\x01\x02\x1b[31m\x7f",
    "\r\n\t",
    "line\nbreak",
    "\u2028\u2029",
    "e\u0301\u0301\u0301",
    "\u0301" * 64,
    "\u202e\u202dabc\u200f\u200e",
    "\u200b\ufeff",
    "\ufffd\uffff\ufffe",
    "\U0001f600\U0001f9d1\u200d\U0001f4bb",
    "\U0010ffff\U000e0001",
    "\u0130\u0131\u00df\ufb03",  # case-mapping oddities
    "../../etc/passwd",
    "*",
    "?[]{}\\",
    "auth:client:x",
    "a:b|c|d",
    "%00%ff",
    "' OR 1=1 --",
    '{"a": 1}',
    "Bearer ",
    "tsat_",
    "-1",
    "9" * 40,
]


@dataclass
class Known:
    """Realistic values mixed into the generated ones, so fuzzing also reaches deep paths."""

    strings: list[str]


@dataclass
class Report:
    cases: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    findings: list[str] = field(default_factory=list)

    def record(self, method: str, code: grpc.StatusCode, details: str, request: str) -> None:
        self.cases += 1
        self.codes[code.name] += 1
        if code not in _CLEAN:
            self.findings.append(f"{method}: {code.name} {details!r} for {request[:300]}")


def _text(known: Known, big: bool) -> st.SearchStrategy[str]:
    pool = AWKWARD + known.strings
    small = st.one_of(
        st.sampled_from(pool),
        st.text(max_size=40),  # every code point but surrogates
        st.builds(lambda a, b: a + b, st.sampled_from(known.strings), st.sampled_from(AWKWARD)),
        st.builds(lambda a, b: a + b, st.sampled_from(AWKWARD), st.sampled_from(known.strings)),
        st.text(st.characters(min_codepoint=0x10000), min_size=1, max_size=8),  # astral
    )
    if not big:
        return small
    return small | st.integers(256, 300_000).map(lambda n: "\u00e9" * n)  # oversize


def _binary(big: bool) -> st.SearchStrategy[bytes]:
    small = st.binary(max_size=64)
    if not big:
        return small
    return small | st.integers(64, 1_200_000).map(lambda n: b"\xff\x00" * (n // 2))


_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _integer(low: int, high: int) -> st.SearchStrategy[int]:
    edges = [low, high, 0, 1, -1, 60, 3600, 2**31 - 1, 2**31, 2**53, -(2**31)]
    return st.one_of(
        st.sampled_from([value for value in edges if low <= value <= high]),
        st.integers(low, high),
        st.integers(max(low, -5), 1000),
    )


def _scalar(fd: FieldDescriptor, known: Known, big: bool = False) -> st.SearchStrategy[Any]:
    """``big`` allows oversize values (only for singular fields at most one level down, so
    a message stays within memory: at most a few MiB)."""
    kind = fd.type
    if kind == FieldDescriptor.TYPE_STRING:
        return _text(known, big)
    if kind == FieldDescriptor.TYPE_BYTES:
        return _binary(big)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=64 if kind == 1 else 32)
    if kind == FieldDescriptor.TYPE_ENUM:
        numbers = [value.number for value in fd.enum_type.values]
        return st.one_of(st.sampled_from(numbers), st.integers(-(2**31), 2**31 - 1))
    return _integer(*_INT_RANGES[kind])


def _repeated(element: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.one_of(
        st.lists(element, max_size=4),
        st.builds(lambda value, n: [value] * n, element, st.integers(100, 3000)),  # long
    )


@st.composite
def messages(draw: st.DrawFn, desc: Descriptor, known: Known, depth: int = 0) -> Message:
    message = message_factory.GetMessageClass(desc)()
    if depth >= _MAX_DEPTH:
        return message
    for fd in desc.fields:
        if not draw(st.integers(0, 2)):  # each field set two times in three
            continue
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            key_fd = fd.message_type.fields_by_name["key"]
            value_fd = fd.message_type.fields_by_name["value"]
            keys = draw(st.lists(_scalar(key_fd, known), max_size=4, unique=True))
            target = getattr(message, fd.name)
            for key in keys:
                if value_fd.message_type is not None:
                    target[key].CopyFrom(draw(messages(value_fd.message_type, known, depth + 1)))
                else:
                    target[key] = draw(_scalar(value_fd, known))
        elif fd.message_type is not None:
            element = messages(fd.message_type, known, depth + 1)
            if fd.is_repeated:
                getattr(message, fd.name).extend(draw(st.lists(element, max_size=3)))
            else:
                getattr(message, fd.name).CopyFrom(draw(element))
        elif fd.is_repeated:
            getattr(message, fd.name).extend(draw(_repeated(_scalar(fd, known))))
        else:
            setattr(message, fd.name, draw(_scalar(fd, known, big=depth <= 1)))
    return message


def _unknown_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field the schema does not know (kept as an unknown field)."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _identity(data: bytes) -> bytes:
    return data


def _methods() -> list[MethodDescriptor]:
    return [method for service in SERVICES for method in service.methods]


def _call(channel: grpc.Channel, method: MethodDescriptor) -> Callable[..., Any]:
    return channel.unary_unary(
        f"/{method.containing_service.full_name}/{method.name}",
        request_serializer=_identity,
        response_deserializer=_identity,
    )


def _send(
    call: Callable[..., Any], payload: bytes, metadata: tuple[tuple[str, str], ...]
) -> tuple[grpc.StatusCode, str]:
    try:
        call(payload, timeout=10, metadata=metadata)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def _fuzz(target: str, admin_token: str, known: Known, report: Report) -> None:
    """Runs in a worker thread with a blocking channel; the server keeps its event loop."""
    garbage = bearer("tsat_" + "A" * 49)
    auth = st.sampled_from([bearer(admin_token)] * 4 + [(), garbage])
    suffix = st.one_of(
        st.just(b""),
        st.builds(_unknown_field, st.integers(1000, 2**29 - 1), st.binary(max_size=32)),
    )
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(target, options=options) as channel:
        for method in _methods():
            call = _call(channel, method)

            @settings(
                max_examples=EXAMPLES_PER_RPC,
                deadline=None,
                database=None,
                derandomize=False,
                phases=(Phase.explicit, Phase.generate),
                suppress_health_check=list(HealthCheck),
            )
            @given(
                request=messages(method.input_type, known),
                extra=suffix,
                metadata=auth,
            )
            def fuzz_one(
                request: Message, extra: bytes, metadata: tuple[tuple[str, str], ...]
            ) -> None:
                payload = request.SerializeToString() + extra
                code, details = _send(call, payload, metadata)  # noqa: B023
                report.record(method.full_name, code, details, repr(request))  # noqa: B023

            fuzz_one()


def _near_limit(target: str, admin_token: str, report: Report) -> None:
    """Every RPC once with an unknown field, once with a string field, just under the limit."""
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    filler = MAX_MESSAGE - 4096
    with grpc.insecure_channel(target, options=options) as channel:
        for method in _methods():
            call = _call(channel, method)
            payload = _unknown_field(4242, b"\x00" * filler)
            code, details = _send(call, payload, bearer(admin_token))
            report.record(method.full_name, code, details, "near-limit unknown field")
            cls = message_factory.GetMessageClass(method.input_type)
            for fd in method.input_type.fields:
                if fd.type == FieldDescriptor.TYPE_STRING and not fd.is_repeated:
                    request = cls(**{fd.name: "\u202e" * (filler // 3)})
                    code, details = _send(call, request.SerializeToString(), bearer(admin_token))
                    report.record(method.full_name, code, details, f"near-limit {fd.name}")
                    break


_DIGEST_MEMBER = re.compile(rb"^(A[\x00-\xff]{32}|r:[0-9a-f]{64})\Z")
# An access token's auth_token_cleanup entry: its member, then the sets that index it.
_ACCESS_ENTRY = re.compile(rb"^A[\x00-\xff]{32}\|[^|]+\|[^|]*\|[^|]*\|.*\Z", re.DOTALL)


def assert_redis_consistent(sync: redis.Redis) -> dict[str, int]:
    """Every client record decodes, the client index and records agree, token-like keys all
    expire, audit targets are short and printable, and index sets name tokens by kind and
    digest only."""
    counts: Counter[str] = Counter()
    clients = {member.decode() for member in sync.zrange("auth:clients", 0, -1)}
    records = set()
    for key in sync.scan_iter(match="auth:client:*", count=1000):
        assert sync.type(key) == b"hash", key
        record = decode_client(sync.hgetall(key))
        records.add(key.decode().removeprefix("auth:client:"))
        assert record.client_id == key.decode().removeprefix("auth:client:"), key
        counts["clients"] += 1
    assert clients == records, clients ^ records
    for prefix in (
        "auth:access_token:",
        "auth:refresh_token:",
        "auth:code:",
        "auth:session:",
        "auth:blacklist:",
        "auth:rate_limit:",
    ):
        for key in sync.scan_iter(match=prefix + "*", count=1000):
            if key.decode().startswith("auth:session_tokens:"):
                continue
            assert sync.ttl(key) > 0, f"{key!r} never expires"
            counts[prefix] += 1
    for prefix in ("auth:client_tokens:", "auth:session_tokens:", "auth:subject_tokens:"):
        for key in sync.scan_iter(match=prefix + "*", count=1000):
            for member in sync.smembers(key):
                assert _DIGEST_MEMBER.match(member), (key, member)
    # Audit entries of refused requests carry the caller's target: clipped and escaped.
    for _, entry in sync.xrange("auth_audit"):
        target = entry[b"target"].decode()
        assert len(target) <= 300, target[:80]
        assert target.isprintable(), target[:80]
        counts["audit entries"] += 1
    for member in sync.zrange("auth_token_cleanup", 0, -1):
        assert _ACCESS_ENTRY.match(member), member
    for member in sync.zrange("auth_refresh_token_cleanup", 0, -1):
        assert _DIGEST_MEMBER.match(member), member
    return dict(counts)


async def _assert_healthy(target: str, admin: Credentials) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert (await issue_token(channel, admin)).startswith("tsat_")


async def test_fuzz_every_rpc_request(app_factory: AppFactory, valkey: RedisProcess) -> None:
    # Limits off, so fuzzed IssueToken/Check calls reach authentication instead of the bucket.
    app = await app_factory(
        redis={"url": valkey.url},
        rate_limit={key: 0 for key in ("per_ip", "per_client", "per_route")}
        | {"token_per_ip": 0, "token_per_client": 0},
    )
    assert app.addresses is not None
    target = app.addresses.grpc_target
    admin = await bootstrap_admin(app)
    async with grpc.aio.insecure_channel(target) as channel:
        admin_token = await issue_token(channel, admin)
        victim = await register_client(channel, admin_token)
        victim_token = await issue_token(channel, victim)
    known = Known(
        strings=[
            victim.client_id,
            victim.client_secret,
            victim_token,
            "client_credentials",
            "authorization_code",
            "refresh_token",
            "openid profile",
            "https://client.example/cb",
            "S256",
            "plain",
            "recipes",
            "authorization",
        ]
    )
    report = Report()
    started = time.monotonic()
    await asyncio.to_thread(_fuzz, target, admin_token, known, report)
    await asyncio.to_thread(_near_limit, target, admin_token, report)
    elapsed = time.monotonic() - started
    assert not report.findings, "\n".join(report.findings[:20])
    assert report.cases >= len(_methods()) * EXAMPLES_PER_RPC
    await _assert_healthy(target, admin)
    keys = assert_redis_consistent(valkey.client(decode_responses=False))
    write_results(
        "fuzz",
        {
            "fuzz_cases_run": report.cases,
            "rpcs": len(_methods()),
            "seconds": round(elapsed, 1),
            "answers": dict(report.codes),
            "internal_or_unknown": 0,
            "redis_keys_checked": keys,
        },
    )


async def test_oversize_messages_are_refused_by_grpc(
    server: Any, channel: grpc.aio.Channel, admin_token: str
) -> None:
    """settings.max_message_bytes (default 4 MiB) is enforced before any handler runs."""
    method = SERVICES[0].methods_by_name["IssueToken"]
    path = f"/{method.containing_service.full_name}/{method.name}"
    async with grpc.aio.insecure_channel(
        server.addresses.grpc_target, options=[("grpc.max_send_message_length", -1)]
    ) as big:
        call = big.unary_unary(path, request_serializer=_identity, response_deserializer=_identity)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(_unknown_field(4242, b"\x00" * MAX_MESSAGE), timeout=10)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        # Just under the limit is parsed and refused on its merits.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(_unknown_field(4242, b"\x00" * (MAX_MESSAGE - 64)), timeout=10)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


MALFORMED = [
    b"\xff",  # a truncated varint tag
    b"\x0a\xff\xff\xff\xff\x0f",  # field 1, length 4 GiB, no data
    b"\x0a\x05ab",  # length past the end
    b"\x0a\x02\xc3\x28",  # field 1 (a string everywhere) with invalid UTF-8
    b"\x0b\x0c",  # deprecated group start/end mismatch
    b"\x00",  # field number 0
    b"\x07\x01",  # wire type 7 does not exist
    bytes(range(256)),
]


async def test_malformed_frames_get_a_clean_error_and_leave_the_server_healthy(
    server: Any, channel: grpc.aio.Channel, admin_token: str, admin_credentials: Credentials
) -> None:
    """Bytes that are not a protobuf message never reach a servicer: the lenient deserializer
    (transport/unimplemented.py) turns them into INVALID_ARGUMENT "malformed request message"
    (UNAUTHENTICATED first without a token). Left to grpcio, they got UNKNOWN with the parser's
    exception text and a logged traceback; see docs/hostile-input.md."""
    codes: Counter[str] = Counter()
    for method in _methods():
        call = _call_aio(channel, method)
        for payload in MALFORMED:
            try:
                await call(payload, timeout=5, metadata=bearer(admin_token))
            except grpc.aio.AioRpcError as error:
                codes[f"{error.code().name}: {error.details()}"] += 1
            else:
                codes["OK"] += 1
    print(f"\nmalformed frames: {dict(codes)}")
    assert codes["INVALID_ARGUMENT: malformed request message"] > len(_methods())
    unclean = [key for key in codes if key.startswith(("UNKNOWN", "INTERNAL"))]
    assert not unclean, unclean
    await _assert_healthy(server.addresses.grpc_target, admin_credentials)


def _call_aio(channel: grpc.aio.Channel, method: MethodDescriptor) -> Any:
    return channel.unary_unary(
        f"/{method.containing_service.full_name}/{method.name}",
        request_serializer=_identity,
        response_deserializer=_identity,
    )


def test_a_cache_value_must_fit_in_a_message() -> None:
    with pytest.raises(ConfigError, match="max_message_bytes"):
        load_settings(None, {"cache": {"max_value_bytes": 8 * 1024 * 1024}})
    settings = load_settings(
        None, {"cache": {"max_value_bytes": 8 * 1024 * 1024}, "max_message_bytes": 9 * 1024 * 1024}
    )
    assert settings.max_message_bytes == 9 * 1024 * 1024
