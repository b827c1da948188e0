"""``tokenservice doctor``: what an on-call engineer checks first, in one command.

Each check yields a :class:`Finding` (ok, warn or fail) with a fix hint; the command
exits 1 when a check failed (``--strict``: also on a warning). Checks, in order:

* **topology**: which Redis deployment the configuration names;
* **sentinels** (Sentinel topology): every configured sentinel answers ``SENTINEL MASTER``
  and ``SENTINEL CKQUORUM``, none sees the master down or a failover in progress, and
  all of them agree on the master's address;
* **reachability**: the auth and the cache DB answer PING through the service's own
  clients (same credentials, TLS and database numbers);
* **replication**: the node we write to is a master; every replica Sentinel knows (or
  the master lists) is connected, its link is up and its lag small;
* **memory**: ``maxmemory-policy`` is ``noeviction`` (auth data must never be evicted)
  on the master and the replicas, ``maxmemory`` is set and not nearly used up;
* **scripts**: every Lua script of this version loads (``SCRIPT LOAD``) and is then in
  the script cache (``SCRIPT EXISTS``);
* **data model**: ``auth_config.data_model_version`` (written by ``tokenservice init``)
  equals the version this code writes (an older one this code reads as is: a warning);
* **cleanup jobs**: ``auth_cleanup_metrics`` / ``cache_cleanup_metrics`` say the jobs
  ran recently (``last_run``);
* **clock**: the Redis server's ``TIME`` and the local clock agree.

It reads only, except for ``SCRIPT LOAD`` (which adds to the script cache, as the service
itself does on first use). Everything is read with INFO rather than CONFIG GET, so the
service's least-privilege ACL users (``+info``, no ``@dangerous``) can run it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    NoPermissionError,
    ResponseError,
)

from tokenservice_server.config import RedisTopology, Settings, parse_host_port
from tokenservice_server.logging import get_logger
from tokenservice_server.storage.connection import (
    RedisConnections,
    _credentials,
    _ssl_kwargs,
    connect_redis,
)
from tokenservice_server.storage.data_model import (
    DATA_MODEL_VERSION,
    READABLE_DATA_MODEL_VERSIONS,
)
from tokenservice_server.storage.scripts import ScriptRegistry

__all__ = ["DoctorReport", "Finding", "Status", "run_doctor", "run_doctor_command"]

_log = get_logger("tokenservice.doctor")

#: Hash written by ``tokenservice init`` (copy of the configuration, data-model version).
AUTH_CONFIG_KEY: Final = "auth_config"
DATA_MODEL_FIELD: Final = "data_model_version"
#: Hashes written by the cleanup jobs; ``last_run`` is when a run finished (Unix seconds).
CLEANUP_JOBS: Final = (
    # name, db, key, schedule (s): warn after 3 missed runs, fail after 12
    ("tokens", "auth", "auth_cleanup_metrics", 300),
    ("cache", "cache", "cache_cleanup_metrics", 600),
)
CLOCK_SKEW_WARN: Final = 0.5
CLOCK_SKEW_FAIL: Final = 2.0
REPLICA_LAG_WARN: Final = 5  # seconds since the replica's last ACK
REPLICA_LAG_FAIL: Final = 30
MEMORY_WARN: Final = 0.80
MEMORY_FAIL: Final = 0.95
SAFE_POLICY: Final = "noeviction"
_RUNBOOK: Final = "docs/runbook.md"


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Finding:
    check: str
    status: Status
    summary: str
    hint: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class DoctorReport:
    target: str
    findings: list[Finding] = field(default_factory=list)

    def add(
        self, check: str, status: Status, summary: str, hint: str = "", **details: Any
    ) -> Finding:
        finding = Finding(check, status, summary, hint if status is not Status.OK else "", details)
        self.findings.append(finding)
        return finding

    def count(self, status: Status) -> int:
        return sum(finding.status is status for finding in self.findings)

    def exit_code(self, *, strict: bool = False) -> int:
        if self.count(Status.FAIL) or (strict and self.count(Status.WARN)):
            return 1
        return 0

    def to_json(self) -> str:
        return json.dumps(
            {
                "target": self.target,
                "ok": self.count(Status.FAIL) == 0,
                "counts": {status.value: self.count(status) for status in Status},
                "findings": [
                    {**asdict(finding), "status": finding.status.value} for finding in self.findings
                ],
            },
            indent=2,
            default=str,
        )

    def render(self) -> str:
        width = max((len(finding.check) for finding in self.findings), default=10)
        lines = [f"tokenservice doctor: {self.target}"]
        for finding in self.findings:
            label = {Status.OK: "OK", Status.WARN: "WARN", Status.FAIL: "FAIL"}[finding.status]
            lines.append(f"  {label:<4}  {finding.check:<{width}}  {finding.summary}")
            if finding.hint:
                lines.append(f"  {'':<4}  {'':<{width}}  fix: {finding.hint}")
        lines.append(
            f"{self.count(Status.OK)} ok, {self.count(Status.WARN)} warning(s), "
            f"{self.count(Status.FAIL)} failure(s)"
        )
        return "\n".join(lines)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "no answer in time"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _access_hint(error: BaseException, what: str) -> str:
    if isinstance(error, (AuthenticationError, AuthorizationError)) or "WRONGPASS" in str(error):
        return f"check the credentials for {what} (redis.username/password, ACL file)"
    if isinstance(error, NoPermissionError):
        return f"the ACL user for {what} lacks a command; compare with deploy/redis/users.acl"
    return f"is {what} running and reachable from here? (redis-cli -h HOST -p PORT PING)"


class _Doctor:
    def __init__(self, settings: Settings, timeout: float) -> None:
        self.settings = settings
        self.redis_settings = settings.redis
        self.timeout = timeout
        self.report = DoctorReport(target="")
        self._direct: list[Redis] = []

    async def bounded(self, call: Awaitable[Any]) -> Any:
        async with asyncio.timeout(self.timeout):
            return await call

    def direct_client(self, address: tuple[str, int], *, sentinel: bool = False) -> Redis:
        """A client for one node, without retries (a dead node must fail fast)."""
        settings = self.redis_settings
        kwargs: dict[str, Any] = {
            "host": address[0],
            "port": address[1],
            "socket_timeout": self.timeout,
            "socket_connect_timeout": min(self.timeout, settings.connect_timeout),
            "retry": Retry(NoBackoff(), 0),
            "decode_responses": True,
        }
        if sentinel:
            kwargs.update(_credentials(settings.sentinel_username, settings.sentinel_password, {}))
        else:
            kwargs.update(_credentials(settings.username, settings.password, {}))
        if settings.tls.enabled:
            kwargs.update(ssl=True, **_ssl_kwargs(settings))
        client = Redis(**kwargs)
        self._direct.append(client)
        return client

    async def close(self) -> None:
        for client in self._direct:
            await client.aclose()

    # -- checks ---------------------------------------------------------------------------

    async def run(self) -> DoctorReport:
        settings = self.redis_settings
        topology = settings.topology
        if topology is RedisTopology.EMBEDDED:
            self.report.target = "embedded valkey (development)"
            self.report.add(
                "topology",
                Status.WARN,
                "no redis.url or redis.sentinels configured: the embedded development "
                "server, which serve starts and stops itself",
                "point doctor at the deployment: --redis-url, or TOKENSERVICE_REDIS__SENTINELS",
            )
            return self.report
        master: tuple[str, int] | None = None
        if topology is RedisTopology.SENTINEL:
            self.report.target = (
                f"sentinel master {settings.master_name!r} via {','.join(settings.sentinels)}"
            )
            self.report.add("topology", Status.OK, "sentinel", sentinels=len(settings.sentinels))
            master = await self.check_sentinels()
        else:
            self.report.target = f"standalone redis {settings.url}"
            self.report.add("topology", Status.OK, "standalone")
        connections = await connect_redis(settings, log=_log)
        try:
            reachable = await self.check_reachable(connections)
            if not reachable:
                return self.report
            await self.check_replication(connections, master)
            await self.check_memory(connections.auth, "memory", master)
            await self.check_scripts(connections)
            await self.check_data_model(connections)
            await self.check_cleanup(connections)
            await self.check_clock(connections)
        finally:
            await connections.aclose()
        return self.report

    async def check_sentinels(self) -> tuple[str, int] | None:
        settings = self.redis_settings
        name = settings.master_name
        views: dict[str, tuple[str, int]] = {}
        for address_text in settings.sentinels:
            check = f"sentinel {address_text}"
            client = self.direct_client(parse_host_port(address_text), sentinel=True)
            try:
                state = await self.bounded(client.sentinel_master(name))
            except Exception as error:
                self.report.add(
                    check,
                    Status.FAIL,
                    f"cannot ask for master {name!r}: {_describe(error)}",
                    _access_hint(error, "this sentinel")
                    if not isinstance(error, ResponseError)
                    else f"the sentinel does not monitor {name!r}: compare redis.master_name "
                    f"with 'SENTINEL MASTERS' (redis-cli -p PORT SENTINEL MASTERS)",
                )
                continue
            address = (str(state["ip"]), int(state["port"]))
            views[address_text] = address
            flags = _flags(state.get("flags"))
            details = {
                "master": f"{address[0]}:{address[1]}",
                "flags": flags,
                "quorum": state.get("quorum"),
                "other_sentinels": state.get("num-other-sentinels"),
                "replicas": state.get("num-slaves"),
            }
            try:
                await self.bounded(client.sentinel_ckquorum(name))
                quorum_error = ""
            except Exception as error:
                quorum_error = _describe(error)
            if "failover_in_progress" in flags or "promoted" in flags:
                self.report.add(
                    check,
                    Status.FAIL,
                    f"failover in progress (flags {flags})",
                    "wait for it to finish (failover-timeout); if it does not, see "
                    f"{_RUNBOOK}#redissentinelfailoverinprogress",
                    **details,
                )
            elif "s_down" in flags or "o_down" in flags:
                self.report.add(
                    check,
                    Status.FAIL,
                    f"sees the master {details['master']} down (flags {flags})",
                    f"check the master node; see {_RUNBOOK}#redisnomaster",
                    **details,
                )
            elif quorum_error:
                self.report.add(
                    check,
                    Status.FAIL,
                    f"CKQUORUM failed: {quorum_error}",
                    "start the missing sentinels or fix their network: a failover needs a "
                    f"majority; see {_RUNBOOK}#redissentinelquorumlost",
                    **details,
                )
            else:
                self.report.add(
                    check,
                    Status.OK,
                    f"master {details['master']}, quorum {details['quorum']}, "
                    f"{details['other_sentinels']} other sentinel(s), CKQUORUM OK",
                    **details,
                )
        addresses = set(views.values())
        majority = len(settings.sentinels) // 2 + 1
        if len(addresses) > 1:
            seen = ", ".join(f"{s} -> {a[0]}:{a[1]}" for s, a in sorted(views.items()))
            self.report.add(
                "sentinel agreement",
                Status.FAIL,
                f"sentinels disagree on the master: {seen}",
                "a split brain or a failover not yet propagated: check 'SENTINEL MASTER "
                f"{name}' on each; see {_RUNBOOK}#redissentinelfailoverinprogress",
            )
            return None
        if not addresses:
            self.report.add(
                "sentinel agreement",
                Status.FAIL,
                "no sentinel answered",
                "check redis.sentinels, the sentinel pods and sentinel credentials",
            )
            return None
        (master,) = addresses
        if len(views) < majority:
            self.report.add(
                "sentinel agreement",
                Status.FAIL,
                f"only {len(views)} of {len(settings.sentinels)} sentinels answered: no "
                "majority, so no failover can happen",
                f"restore the sentinels; see {_RUNBOOK}#redissentinelquorumlost",
            )
        else:
            self.report.add(
                "sentinel agreement",
                Status.OK,
                f"{len(views)} of {len(settings.sentinels)} sentinels name master "
                f"{master[0]}:{master[1]}",
            )
        return master

    async def check_reachable(self, connections: RedisConnections) -> bool:
        settings = self.redis_settings
        all_ok = True
        for db, client, number in (
            ("auth", connections.auth, settings.auth_db),
            ("cache", connections.cache, settings.cache_db),
        ):
            started = time.perf_counter()
            try:
                await self.bounded(client.ping())
                keys = await self.bounded(client.dbsize())
            except Exception as error:
                all_ok = False
                self.report.add(
                    f"redis {db} db",
                    Status.FAIL,
                    f"DB {number} unreachable: {_describe(error)}",
                    _access_hint(error, f"the {db} DB") + f"; see {_RUNBOOK}#tokenserviceredisdown",
                    db=number,
                )
                continue
            elapsed = (time.perf_counter() - started) * 1000
            self.report.add(
                f"redis {db} db",
                Status.OK,
                f"DB {number} answers ({keys} keys, {elapsed:.1f} ms)",
                db=number,
                keys=keys,
            )
        return all_ok

    async def check_replication(
        self, connections: RedisConnections, master: tuple[str, int] | None
    ) -> None:
        try:
            info = await self.bounded(connections.auth.info("replication"))
        except Exception as error:
            self.report.add(
                "replication",
                Status.WARN,
                f"cannot read INFO replication: {_describe(error)}",
                "grant +info to the auth ACL user",
            )
            return
        role = str(info.get("role"))
        if role != "master":
            self.report.add(
                "replication",
                Status.FAIL,
                f"the auth DB's node is a {role}, not a master: writes fail with READONLY",
                "point redis.url at the master, or use Sentinel (redis.sentinels) so the "
                "service follows failovers",
            )
            return
        master_offset = int(info.get("master_repl_offset", 0))
        connected: dict[tuple[str, int], dict[str, Any]] = {}
        for key, value in info.items():
            if key.startswith("slave") and isinstance(value, dict):
                connected[(str(value.get("ip")), int(value.get("port", 0)))] = value
        expected: list[tuple[str, int]] = list(connected)
        sentinel_flags: dict[tuple[str, int], str] = {}
        if master is not None:
            known = await self._sentinel_replicas()
            if known is not None:
                sentinel_flags = known
                expected = sorted(set(known) | set(connected))
        problems = 0
        for address in expected:
            problems += await self._check_replica(
                address, connected.get(address), sentinel_flags.get(address), master_offset
            )
        summary = f"role master, {len(connected)} replica(s) connected"
        if master is not None:
            summary += f" of {len(expected)} known to Sentinel"
        if problems:
            self.report.add(
                "replication",
                Status.FAIL,
                summary,
                f"see the replica findings; {_RUNBOOK}#redisreplicadown",
                connected=len(connected),
                expected=len(expected),
            )
        elif master is not None and not expected:
            self.report.add(
                "replication",
                Status.WARN,
                summary + ": no replica, so a master failure loses data and availability",
                "add replicas (replicaof) so Sentinel has something to promote",
            )
        else:
            self.report.add(
                "replication", Status.OK, summary, connected=len(connected), expected=len(expected)
            )

    async def _sentinel_replicas(self) -> dict[tuple[str, int], str] | None:
        settings = self.redis_settings
        for address_text in settings.sentinels:
            client = self.direct_client(parse_host_port(address_text), sentinel=True)
            try:
                replicas = await self.bounded(client.sentinel_slaves(settings.master_name))
            except Exception:  # noqa: S112 (the sentinel findings already say why)
                continue
            return {
                (str(replica["ip"]), int(replica["port"])): _flags(replica.get("flags"))
                for replica in replicas
            }
        return None

    async def _check_replica(
        self,
        address: tuple[str, int],
        seen_by_master: dict[str, Any] | None,
        sentinel_flags: str | None,
        master_offset: int,
    ) -> int:
        """One finding for one replica; returns 1 when it is a failure."""
        check = f"replica {address[0]}:{address[1]}"
        hint = f"see {_RUNBOOK}#redisreplicadown"
        if sentinel_flags and ("s_down" in sentinel_flags or "disconnected" in sentinel_flags):
            self.report.add(
                check,
                Status.FAIL,
                f"Sentinel flags it {sentinel_flags}",
                "start the replica (or replace its pod); it resyncs on its own; " + hint,
            )
            return 1
        if seen_by_master is None:
            self.report.add(
                check,
                Status.FAIL,
                "not connected to the master",
                "start the replica or check its 'replicaof' and masterauth; " + hint,
            )
            return 1
        state = str(seen_by_master.get("state"))
        lag = int(seen_by_master.get("lag", 0))
        behind = max(0, master_offset - int(seen_by_master.get("offset", 0)))
        details = {"state": state, "lag_seconds": lag, "behind_bytes": behind}
        client = self.direct_client(address)
        try:
            info = await self.bounded(client.info("replication"))
            memory = await self.bounded(client.info("memory"))
        except Exception as error:
            self.report.add(
                check,
                Status.FAIL,
                f"listed by the master ({state}) but not reachable: {_describe(error)}",
                _access_hint(error, "the replica") + "; " + hint,
                **details,
            )
            return 1
        link = str(info.get("master_link_status", "?"))
        policy = str(memory.get("maxmemory_policy", "?"))
        details.update(link=link, maxmemory_policy=policy)
        if state != "online" or link != "up":
            self.report.add(
                check,
                Status.FAIL,
                f"replication state {state}, link {link}",
                "a full resync may be running (INFO replication: master_sync_in_progress); "
                "if it loops, raise client-output-buffer-limit replica; " + hint,
                **details,
            )
            return 1
        if lag > REPLICA_LAG_FAIL:
            self.report.add(
                check,
                Status.FAIL,
                f"lagging: last ACK {lag} s ago, {behind} bytes behind",
                f"check the replica's CPU, disk and network; see {_RUNBOOK}#redisreplicalag",
                **details,
            )
            return 1
        if policy != SAFE_POLICY:
            self.report.add(
                check,
                Status.FAIL,
                f"maxmemory-policy {policy}: after a failover auth data could be evicted",
                f"CONFIG SET maxmemory-policy {SAFE_POLICY} on it, and in its config file",
                **details,
            )
            return 1
        status = Status.WARN if lag > REPLICA_LAG_WARN else Status.OK
        self.report.add(
            check,
            status,
            f"online, link up, last ACK {lag} s ago, {behind} bytes behind",
            f"see {_RUNBOOK}#redisreplicalag",
            **details,
        )
        return 0

    async def check_memory(self, client: Redis, check: str, master: tuple[str, int] | None) -> None:
        try:
            memory = await self.bounded(client.info("memory"))
            stats = await self.bounded(client.info("stats"))
        except Exception as error:
            self.report.add(
                check,
                Status.WARN,
                f"cannot read INFO memory: {_describe(error)}",
                "grant +info to the auth ACL user",
            )
            return
        policy = str(memory.get("maxmemory_policy", "?"))
        limit = int(memory.get("maxmemory", 0))
        used = int(memory.get("used_memory", 0))
        evicted = int(stats.get("evicted_keys", 0))
        details = {
            "maxmemory_policy": policy,
            "maxmemory": limit,
            "used_memory": used,
            "evicted_keys": evicted,
        }
        if policy != SAFE_POLICY:
            self.report.add(
                check,
                Status.FAIL,
                f"maxmemory-policy is {policy}: Redis may evict auth data (clients, tokens, "
                "revocations) under memory pressure",
                f"redis-cli CONFIG SET maxmemory-policy {SAFE_POLICY} (and set it in "
                f"redis.conf); see {_RUNBOOK}#redisevictingkeys",
                **details,
            )
            return
        if evicted:
            self.report.add(
                check,
                Status.FAIL,
                f"{evicted} key(s) were evicted since the server started",
                f"find out when the policy was unsafe; see {_RUNBOOK}#redisevictingkeys",
                **details,
            )
            return
        if limit == 0:
            self.report.add(
                check,
                Status.WARN,
                f"policy {policy} but maxmemory is 0 (unlimited, {used} bytes used): the "
                "kernel OOM-kills Redis before it refuses writes",
                "set maxmemory to ~75% of the container memory limit (CONFIG SET maxmemory)",
                **details,
            )
            return
        ratio = used / limit
        status = (
            Status.FAIL
            if ratio >= MEMORY_FAIL
            else Status.WARN
            if ratio >= MEMORY_WARN
            else Status.OK
        )
        self.report.add(
            check,
            status,
            f"policy {policy}, {used} of {limit} bytes used ({ratio:.0%})",
            f"writes fail with OOM when full; see {_RUNBOOK}#redismemorynearmax",
            **details,
        )

    async def check_scripts(self, connections: RedisConnections) -> None:
        try:
            registry = ScriptRegistry(connections.auth)
            scripts = {name: registry[name] for name in registry}
            shas = [script.sha for script in scripts.values()]
            before = await self.bounded(connections.auth.script_exists(*shas))
            for (name, script), present in zip(scripts.items(), before, strict=True):
                if not present:
                    try:
                        await self.bounded(connections.auth.script_load(script.script))
                    except ResponseError as error:
                        self.report.add(
                            "scripts",
                            Status.FAIL,
                            f"{name}.lua does not load: {error}",
                            "a broken release or a server too old for it (SCRIPT LOAD)",
                        )
                        return
            after = await self.bounded(connections.auth.script_exists(*shas))
        except Exception as error:
            self.report.add(
                "scripts",
                Status.FAIL,
                f"cannot load the Lua scripts: {_describe(error)}",
                "the auth ACL user needs +@scripting (EVALSHA, SCRIPT LOAD/EXISTS)",
            )
            return
        missing = [name for name, present in zip(scripts, after, strict=True) if not present]
        if missing:
            self.report.add(
                "scripts",
                Status.FAIL,
                f"loaded but not in the script cache: {', '.join(missing)}",
                "is something running SCRIPT FLUSH? (MONITOR briefly, or the ACL log)",
            )
            return
        loaded_now = len(shas) - sum(bool(present) for present in before)
        self.report.add(
            "scripts",
            Status.OK,
            f"{len(shas)} scripts in the script cache ({loaded_now} loaded now)",
            scripts=len(shas),
            loaded_now=loaded_now,
        )

    async def check_data_model(self, connections: RedisConnections) -> None:
        try:
            raw = await self.bounded(connections.auth.hget(AUTH_CONFIG_KEY, DATA_MODEL_FIELD))
        except Exception as error:
            self.report.add(
                "data model",
                Status.FAIL,
                f"cannot read {AUTH_CONFIG_KEY}: {_describe(error)}",
                "check the auth ACL user's key patterns (~auth_*)",
            )
            return
        if raw is None:
            self.report.add(
                "data model",
                Status.WARN,
                f"no {AUTH_CONFIG_KEY}.{DATA_MODEL_FIELD}: tokenservice init never ran here",
                "run the init Job (tokenservice init)",
                expected=DATA_MODEL_VERSION,
            )
            return
        try:
            stored = int(_text(raw))
        except ValueError:
            stored = -1
        if stored == DATA_MODEL_VERSION:
            self.report.add("data model", Status.OK, f"version {stored}", version=stored)
        elif stored in READABLE_DATA_MODEL_VERSIONS:
            self.report.add(
                "data model",
                Status.WARN,
                f"Redis records data model {stored}; this code reads it as is and writes "
                f"{DATA_MODEL_VERSION}",
                "record the new version (tokenservice init), so an older release is warned",
                stored=_text(raw),
                expected=DATA_MODEL_VERSION,
            )
        elif 0 <= stored < DATA_MODEL_VERSION:
            self.report.add(
                "data model",
                Status.FAIL,
                f"Redis holds data model {stored}, this code writes {DATA_MODEL_VERSION}",
                "run the migration for this release (tokenservice init), then restart",
                stored=_text(raw),
                expected=DATA_MODEL_VERSION,
            )
        else:
            self.report.add(
                "data model",
                Status.FAIL,
                f"Redis holds data model {_text(raw)!r}, newer than or unknown to this "
                f"code ({DATA_MODEL_VERSION})",
                "this binary is older than the data: roll forward to the release that wrote it",
                stored=_text(raw),
                expected=DATA_MODEL_VERSION,
            )

    async def check_cleanup(self, connections: RedisConnections) -> None:
        now = time.time()
        for job, db, key, interval in CLEANUP_JOBS:
            client = connections.auth if db == "auth" else connections.cache
            check = f"cleanup {job}"
            try:
                fields = await self.bounded(client.hgetall(key))
            except Exception as error:
                self.report.add(check, Status.WARN, f"cannot read {key}: {_describe(error)}", "")
                continue
            values = {_text(name): _text(value) for name, value in fields.items()}
            last_run = _timestamp(values.get("last_run"))
            anchor = f"{_RUNBOOK}#tokenservicecleanupjobnotrun"
            if last_run is None:
                self.report.add(
                    check,
                    Status.WARN,
                    f"{key}.last_run absent: the job never ran here",
                    f"check the CronJob tokenservice-cleanup-{job} "
                    f"(kubectl get cronjob,job); see {anchor}",
                )
                continue
            age = now - last_run
            details = {"last_run": last_run, "age_seconds": round(age)}
            if age > 12 * interval:
                status = Status.FAIL
            elif age > 3 * interval:
                status = Status.WARN
            else:
                status = Status.OK
            self.report.add(
                check,
                status,
                f"last run {_age(age)} ago (scheduled every {interval // 60} min)",
                f"the job stopped running: kubectl describe cronjob tokenservice-cleanup-{job}; "
                f"see {anchor}",
                **details,
            )

    async def check_clock(self, connections: RedisConnections) -> None:
        try:
            before = time.time()
            seconds, micros = await self.bounded(connections.auth.time())
            after = time.time()
        except Exception as error:
            self.report.add("clock", Status.WARN, f"cannot read TIME: {_describe(error)}")
            return
        server = int(seconds) + int(micros) / 1e6
        skew = server - (before + after) / 2
        details = {
            "skew_seconds": round(skew, 4),
            "round_trip_ms": round((after - before) * 1e3, 2),
        }
        if abs(skew) >= CLOCK_SKEW_FAIL:
            status = Status.FAIL
        elif abs(skew) >= CLOCK_SKEW_WARN:
            status = Status.WARN
        else:
            status = Status.OK
        self.report.add(
            "clock",
            status,
            f"Redis TIME is {skew:+.3f} s from the local clock",
            "token expiry uses both clocks: fix NTP/chrony on the node that drifts "
            f"(chronyc tracking); see {_RUNBOOK}#tokenserviceclockskew",
            **details,
        )


def _flags(value: Any) -> str:
    """Sentinel flags as one string (redis-py parses them into a set)."""
    if isinstance(value, (set, frozenset, list, tuple)):
        return ",".join(sorted(_text(flag) for flag in value))
    return _text(value) if value is not None else ""


def _timestamp(value: str | None) -> float | None:
    """Unix seconds or an ISO 8601 time -> Unix seconds."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


async def run_doctor(settings: Settings, *, check_timeout: float = 3.0) -> DoctorReport:
    doctor = _Doctor(settings, check_timeout)
    try:
        return await doctor.run()
    finally:
        await doctor.close()


async def run_doctor_command(
    settings: Settings,
    *,
    json_output: bool = False,
    strict: bool = False,
    check_timeout: float = 3.0,
    write: Callable[[str], Any] = print,
) -> int:
    """Run every check, print the report; 0 when nothing failed, else 1."""
    report = await run_doctor(settings, check_timeout=check_timeout)
    write(report.to_json() if json_output else report.render())
    return report.exit_code(strict=strict)
