"""Envoy's external authorization API, ``envoy.service.auth.v3.Authorization/Check``.

A thin adapter: CheckRequest -> :class:`AccessRequest`, one call to the domain's
:class:`AccessChecker`, :class:`AccessDecision` -> CheckResponse. A denial is a normal
CheckResponse whose ``denied_response`` is the HTTP answer Envoy returns as given (401 +
``WWW-Authenticate``, 403, 429 + ``Retry-After``); only a broken authorizer (Redis
unreachable) ends the RPC with an error status, which Envoy answers with its
``status_on_error`` (or lets through under ``failure_mode_allow``).

Envoy's deadline (``grpc-timeout``, 200 ms by default) is honoured: the Redis call and its
retries are given up just before it (storage/retry.py, answered UNAVAILABLE), and grpc.aio
cancels the handler at the deadline itself.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from tokenservice_server import log_context
from tokenservice_server.domain.access_check import (
    AccessChecker,
    AccessDecision,
    AccessRequest,
    Outcome,
    route_requirements,
)
from tokenservice_server.domain.scopes import format_scope
from tokenservice_server.domain.tokens import Caller
from tokenservice_server.metrics import ServerMetrics
from tokenservice_server.transport.unimplemented import serialized_response

__all__ = ["AuthorizationServicer"]

Context = grpc.aio.ServicerContext[Any, Any]

# Headers the upstream may trust: always set by us or removed, whatever the caller sent.
CLIENT_ID_HEADER = "x-auth-client-id"
SUBJECT_HEADER = "x-auth-subject"
SCOPES_HEADER = "x-auth-scopes"

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

#: Distinct CheckResponses kept (allowed: per client, subject and scopes; denials).
_RESPONSES = 4096

_RESULT = {outcome: outcome.value for outcome in Outcome}  # without the enum's property

_RPC_CODE = {
    Outcome.ALLOWED: code_pb2.OK,
    Outcome.MISSING_CREDENTIALS: code_pb2.UNAUTHENTICATED,
    Outcome.INVALID_TOKEN: code_pb2.UNAUTHENTICATED,
    Outcome.INSUFFICIENT_SCOPE: code_pb2.PERMISSION_DENIED,
    Outcome.RATE_LIMITED: code_pb2.RESOURCE_EXHAUSTED,
}


def _headers(http: attribute_context_pb2.AttributeContext.HttpRequest) -> Mapping[str, str]:
    """Request headers by lower-case name (``header_map`` when Envoy sends raw headers)."""
    headers: Mapping[str, str] = http.headers
    if headers or not http.header_map.headers:
        return headers
    return {
        entry.key.lower(): entry.value or entry.raw_value.decode("utf-8", "replace")
        for entry in http.header_map.headers
    }


def _header(name: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, value=value), append_action=_OVERWRITE
    )


def _metadata(decision: AccessDecision) -> struct_pb2.Struct:
    """For Envoy's access log: ``%DYNAMIC_METADATA(envoy.filters.http.ext_authz:...)%``."""
    fields: dict[str, str] = {"result": decision.outcome.value}
    if decision.caller is not None:
        fields["client_id"] = decision.caller.client_id
        if decision.caller.subject:
            fields["subject"] = decision.caller.subject
    if decision.limited_by:
        fields["rate_limited_by"] = decision.limited_by
    metadata = struct_pb2.Struct()
    metadata.update(fields)
    return metadata


class AuthorizationServicer:
    def __init__(
        self,
        checker: AccessChecker,
        metrics: ServerMetrics,
        headers_to_remove: Sequence[str] = ("authorization",),
    ) -> None:
        self._checker = checker
        # What Check reads of the request's addresses, decided once (the policy is fixed).
        self._reads_source = checker.counts_by_address
        self._reads_forwarded_for = checker.counts_by_address and checker.trusts_forwarded_for
        self._headers_to_remove = tuple(name.lower() for name in headers_to_remove)
        # Every result is exported from the start, at 0; children are looked up once
        # (labels() costs more than the increment on this path).
        self._results = {
            outcome: metrics.check_results.labels(result=outcome.value) for outcome in Outcome
        }
        self._rate_limited = metrics.rate_limited.labels  # by bucket
        self._allowed = functools.lru_cache(maxsize=_RESPONSES)(self._build_allowed)
        self._denied = functools.lru_cache(maxsize=_RESPONSES)(self._build)

    def _build_allowed(
        self, outcome: Outcome, client_id: str, subject: str, scopes: frozenset[str]
    ) -> bytes:
        caller = Caller(client_id=client_id, scopes=scopes, subject=subject)
        return self._build(AccessDecision(outcome=outcome, caller=caller))

    @serialized_response
    async def Check(self, request: external_auth_pb2.CheckRequest, context: Context) -> bytes:
        """The serialized CheckResponse (answers repeat: each is serialized once)."""
        attributes = request.attributes
        headers = _headers(attributes.request.http)
        authorization = headers.get("authorization")
        route = route_requirements(attributes.context_extensions)
        checker = self._checker
        decision = checker.check_cached(authorization, route)  # a hot token: nothing awaited
        if decision is None:
            # The addresses only where a per-IP limit counts by them (x-forwarded-for only
            # where it is also trusted): each nested field read costs every Check.
            source = attributes.source.address.socket_address.address if self._reads_source else ""
            forwarded = headers.get("x-forwarded-for", "") if self._reads_forwarded_for else ""
            # Positional (authorization, source_address, forwarded_for, route): keywords
            # cost more on every Check.
            decision = await checker.check(AccessRequest(authorization, source, forwarded, route))
        outcome = decision.outcome
        self._results[outcome].inc()
        if decision.limited_by:
            self._rate_limited(decision.limited_by).inc()
        caller = decision.caller
        fields = log_context.fields()
        fields["check_result"] = _RESULT[outcome]
        if caller is not None:
            fields["client_id"] = caller.client_id
        return self._response(decision)

    def _response(self, decision: AccessDecision) -> bytes:
        """The serialized CheckResponse of ``decision``, built once per distinct answer:
        building one (headers, the metadata Struct) cost ~26 microseconds and serializing
        it ~5,000 instructions, and answers repeat (one per client, subject and scopes;
        the same few denials)."""
        caller = decision.caller
        if caller is not None:
            # Only these fields reach the response: the token digest must not split the key.
            return self._allowed(decision.outcome, caller.client_id, caller.subject, caller.scopes)
        return self._denied(decision)

    def _build(self, decision: AccessDecision) -> bytes:
        response: bytes = _check_response(decision, self._headers_to_remove).SerializeToString()
        return response


def _check_response(
    decision: AccessDecision, headers_to_remove: Sequence[str]
) -> external_auth_pb2.CheckResponse:
    """Envoy's answer: an allowed request goes upstream with the caller's identity
    headers (and without ``headers_to_remove``); a denied one gets the HTTP denial."""
    response = external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=_RPC_CODE[decision.outcome]),
        dynamic_metadata=_metadata(decision),
    )
    if decision.caller is not None:
        caller = decision.caller
        identity = {
            CLIENT_ID_HEADER: caller.client_id,
            SUBJECT_HEADER: caller.subject,
            SCOPES_HEADER: format_scope(caller.scopes),
        }
        ok = response.ok_response
        ok.headers.extend(_header(name, value) for name, value in identity.items() if value)
        # An empty value cannot overwrite (Envoy drops empty headers), so a header we
        # have no value for is removed: a caller's spoofed copy never reaches upstream.
        empty = [name for name, value in identity.items() if not value]
        ok.headers_to_remove.extend([*headers_to_remove, *empty])
        return response
    denied = response.denied_response
    denied.status.code = decision.http_status  # envoy.type.v3.StatusCode numbers
    if decision.challenge:
        denied.headers.append(_header("www-authenticate", decision.challenge))
    if decision.outcome is Outcome.RATE_LIMITED:
        denied.headers.append(_header("retry-after", str(decision.retry_after_seconds)))
    body = _denied_body(decision)
    if body:
        denied.headers.append(_header("content-type", "application/json"))
        denied.body = body
    return response


def _denied_body(decision: AccessDecision) -> str:
    """``{"error": ..., "error_description": ...}``; none for a bare 401 (RFC 6750
    section 3.1: no error information when the request carried no credentials)."""
    if decision.outcome is Outcome.RATE_LIMITED:
        error = "rate_limited"
    elif decision.error is not None:
        error = decision.error.value
    else:
        return ""
    body = {"error": error}
    if decision.description:
        body["error_description"] = decision.description
    return json.dumps(body, separators=(",", ":"))
