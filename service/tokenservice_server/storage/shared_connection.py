"""The commands of concurrent calls on one shared, pipelined connection per database.

Why (docs/performance.md): under load, a command through redis-py's pool cost the server
~100 microseconds of CPU more than the command itself: taking and returning a pooled
connection, a timeout context and a Task around each read, a StreamReader between the
socket and the parser. Redis answers the commands of one connection in the order it
received them, so many callers can share a connection: each writes its command at once
and waits for its own reply, which the connection's protocol hands over as it parses it
(no reader task, no lock, no per-command timer). Measured in the bench, every
Redis-backed RPC (Check, IntrospectToken, IssueToken, RevokeToken, the cache RPCs) costs
the server 50-115 microseconds less CPU (10-20% more throughput).

What stays redis-py's: the connection itself. One is made by the pool's own
``make_connection()`` and ``connect()`` (TLS, AUTH with the ACL user, SELECT, unix sockets,
Sentinel's choice of master); only after that handshake does :class:`_Replies` take over
its transport. The command packer and the reply parser (hiredis) are the same ones
redis-py uses, and the caller's retry policy is the pool's (``BoundedRetry``).

Which commands: only those that neither block the connection nor change its state
(``SHARED_COMMANDS``: the scripts and the reads and counters of the hot paths), and
pipelines made only of them. Transactions, WATCH, WAIT (replicated durability), pub/sub
and everything else take a pooled connection as before.

RESP2 or RESP3 (redis-py 8 negotiates RESP3 unless told otherwise): the replies are the
same ones redis-py's own parser would read. A RESP3 push message (out-of-band data such
as a client-tracking invalidation; nothing here subscribes or tracks, so none is
expected) answers no command: it is dropped, never handed to a caller as its reply.

Failures:

* The connection is lost: every command in flight on it fails with ``ConnectionError``;
  each caller's retry policy retries on a new connection, made once for all of them.
* No reply within ``socket_timeout`` while commands are in flight: all of them fail with
  ``TimeoutError`` and the connection is closed, as redis-py closes a connection whose
  read timed out. One timer per connection checks for progress every ``socket_timeout``,
  so a stall is found after one to two timeouts (the caller's deadline still bounds each
  call, ``retry._before``).
* A caller gives up (cancelled, deadline): its reply is dropped when it arrives and the
  connection stays in use (a pooled connection has to be closed in that case).
* A Sentinel master pool: ``READONLY`` (the node was demoted) and ``NOREPLICAS`` (an old
  master refusing writes) retire the connection and fail the command with a
  ``ConnectionError`` that is retried on a connection to the master Sentinel names
  (``sentinel.py`` does the same for pooled connections). The pool moving to a new master
  (``disconnect``) retires it too: commands in flight finish, new ones go to the new one.
"""

from __future__ import annotations

import asyncio
import codecs
import copy
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.exceptions import (
    ConnectionError,
    InvalidResponse,
    ReadOnlyError,
    ResponseError,
    TimeoutError,
)

from tokenservice_server.recent import remember
from tokenservice_server.storage.retry import BoundedRetry

__all__ = ["SHARED_COMMANDS", "RecentCommands", "SharedConnection"]

#: Commands that may share a connection: none blocks it or changes its state.
SHARED_COMMANDS: Final = frozenset(
    {
        "EVALSHA",
        "EXISTS",
        "GET",
        "HGET",
        "HGETALL",
        "HINCRBY",
        "HMGET",
        "MGET",
        "PTTL",
        "TTL",
        "ZCOUNT",
        "ZSCORE",
    }
)


class _Batch:
    """The replies of one pipeline, handed over together."""

    __slots__ = ("future", "remaining", "replies")

    def __init__(self, future: asyncio.Future[Any], size: int) -> None:
        self.future = future
        self.remaining = size
        self.replies: list[Any] = []


class _Replies(asyncio.Protocol):
    """The protocol of a shared connection after its handshake: replies, in order, to the
    callers waiting for them."""

    def __init__(
        self,
        connection: AbstractConnection,
        previous: asyncio.BaseProtocol,
        reader: hiredis.Reader,
        *,
        follows_master: bool,
        timeout: float | None,
    ) -> None:
        self.connection = connection
        self.previous = previous
        self.reader = reader
        self.follows_master = follows_master
        self.transport: asyncio.WriteTransport = connection._writer.transport  # type: ignore[union-attr]
        self.waiting: deque[asyncio.Future[Any] | _Batch] = deque()
        self.sent = 0  # commands written
        self.answered = 0  # replies handed over
        self.open = True
        self.retired = False
        self.timeout = timeout
        self._watch: asyncio.TimerHandle | None = None
        self._watched_answered = 0
        self._watched_sent = 0
        self.pack = _packer_for(connection)

    # -- asyncio.Protocol --------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                if type(reply) is hiredis.PushNotification:
                    continue  # RESP3 out-of-band data (e.g. tracking), never a reply
                self._hand_over(reply)
        except InvalidResponse as error:
            self.fail(ConnectionError(f"Protocol error from Redis: {error}"))

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost fails what is in flight

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self._fail_waiting(ConnectionError(f"Connection to Redis lost: {exc or 'closed'}"))
        self.previous.connection_lost(exc)  # the StreamWriter learns it, as before the swap
        self.connection._close()  # type: ignore[no-untyped-call]

    # -- replies -----------------------------------------------------------------------

    def send(
        self, packed: Iterable[bytes], entry: asyncio.Future[Any] | _Batch, count: int
    ) -> None:
        self.transport.writelines(packed)
        self.waiting.append(entry)
        self.sent += count
        if self._watch is None and self.timeout:
            self._watched_answered, self._watched_sent = self.answered, self.sent
            self._watch = asyncio.get_running_loop().call_later(self.timeout, self._check)

    def submit(self, args: Sequence[Any]) -> asyncio.Future[Any]:
        """Write one command; the future of its reply."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.send((self.pack(args),), future, 1)
        return future

    def _check(self) -> None:
        """No reply since the last check while commands were in flight: Redis stalled."""
        self._watch = None
        if not self.open or not self.waiting:
            return
        if self.answered == self._watched_answered and self._watched_sent > self.answered:
            self.fail(TimeoutError("Timeout reading from socket"))
            return
        self._watched_answered, self._watched_sent = self.answered, self.sent
        assert self.timeout is not None
        self._watch = asyncio.get_running_loop().call_later(self.timeout, self._check)

    def _hand_over(self, reply: Any) -> None:
        if not self.waiting:
            self.fail(ConnectionError(f"Unexpected reply from Redis: {reply!r:.80}"))
            return
        self.answered += 1
        if self.follows_master and isinstance(reply, ResponseError):
            failover = _failover_error(reply, self.connection)
            if failover is not None:
                # Not the master any more: nothing more is sent here.
                self.retired = True
                reply = failover
        head = self.waiting[0]
        if type(head) is _Batch:
            head.replies.append(reply)
            head.remaining -= 1
            if head.remaining:
                return
            self.waiting.popleft()
            if not head.future.done():
                head.future.set_result(head.replies)
        else:
            self.waiting.popleft()
            if head.done():  # type: ignore[union-attr]
                pass  # the caller gave up: the reply is dropped
            elif isinstance(reply, Exception):
                head.set_exception(reply)  # type: ignore[union-attr]
            else:
                head.set_result(reply)  # type: ignore[union-attr]
        if self.retired and not self.waiting:
            self.close()

    def retire(self) -> None:
        """Nothing more is sent here; closed once the replies in flight are in."""
        self.retired = True
        if not self.waiting:
            self.close()

    def fail(self, error: Exception) -> None:
        """Fail every command in flight and close the connection."""
        self.open = False
        self._fail_waiting(error)
        self.close()

    def _fail_waiting(self, error: Exception) -> None:
        waiting = self.waiting
        while waiting:
            entry = waiting.popleft()
            future = entry.future if type(entry) is _Batch else entry
            if not future.done():  # type: ignore[union-attr]
                future.set_exception(copy.copy(error))  # type: ignore[union-attr]

    def close(self) -> None:
        self.open = False
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self.transport.close()
        # The redis-py connection forgets its streams without waiting (it made them).
        self.connection._close()  # type: ignore[no-untyped-call]


def _failover_error(reply: ResponseError, connection: AbstractConnection) -> Exception | None:
    if isinstance(reply, ReadOnlyError):
        return ConnectionError("The previous master is now a slave")
    if str(reply).startswith("NOREPLICAS"):
        from tokenservice_server.storage.sentinel import NoReplicasError

        where = f"{getattr(connection, 'host', '?')}:{getattr(connection, 'port', '?')}"
        return NoReplicasError(f"master {where} refused the write: {reply}")
    return None


class SharedConnection:
    """One connection of a pool that many callers use at once (see the module doc).

    ``make`` builds an unconnected redis-py connection (the pool's ``make_connection``);
    ``follows_master``: the pool is a Sentinel master pool (see "Failures" above).
    """

    def __init__(
        self,
        make: Callable[[], AbstractConnection],
        *,
        retry: Retry,
        socket_timeout: float | None,
        follows_master: bool = False,
    ) -> None:
        self._make = make
        #: The pool's retry policy (one copy for the shared connection, as redis-py
        #: gives each of its connections one).
        self.retry: Retry = copy.deepcopy(retry)
        self._timeout = socket_timeout
        self._follows_master = follows_master
        self._replies: _Replies | None = None
        self._connecting: asyncio.Future[_Replies] | None = None

    @property
    def connected(self) -> bool:
        replies = self._replies
        return replies is not None and replies.open

    # -- sending -----------------------------------------------------------------------

    def _usable(self) -> _Replies | None:
        replies = self._replies
        if replies is None or not replies.open or replies.retired:
            return None
        return replies

    async def call(self, args: Sequence[Any]) -> Any:
        """One command under the pool's retry policy; its reply (an error reply raised).

        Every hot RPC's round trip comes here: on a connection in use the first attempt
        is made directly, and the retry loop is set up only if it fails
        (``BoundedRetry.after_failure``: the same retries and budget)."""
        replies = self._usable()
        retry = self.retry
        if replies is not None and isinstance(retry, BoundedRetry) and retry.may_try_alone():
            started = time.monotonic()
            try:
                return await replies.submit(args)
            except (ConnectionError, TimeoutError) as error:
                return await retry.after_failure(
                    error, started, lambda: self.execute(args), _nothing_to_close
                )
        return await retry.call_with_retry(lambda: self.execute(args), _nothing_to_close)

    async def call_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """``execute_many`` under the pool's retry policy. A failover reply among the
        replies (READONLY, NOREPLICAS from a Sentinel master: a ``ConnectionError``)
        fails the attempt, so the whole batch is sent again, as on a lost connection."""

        async def attempt() -> list[Any]:
            replies = await self.execute_many(commands)
            for reply in replies:
                if isinstance(reply, ConnectionError):
                    raise reply
            return replies

        return await self.retry.call_with_retry(attempt, _nothing_to_close)

    async def execute(self, args: Sequence[Any]) -> Any:
        """Send one command, return its reply (an error reply is raised)."""
        replies = self._usable() or await self._connection()
        return await replies.submit(args)

    async def execute_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send several commands in one write; their replies in order (error replies as
        exception objects, as redis-py's pipelines collect them)."""
        replies = self._usable() or await self._connection()
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        packed = [replies.pack(command) for command in commands]
        replies.send(packed, _Batch(future, len(commands)), len(commands))
        return await future

    # -- the connection ----------------------------------------------------------------

    async def _connection(self) -> _Replies:
        connecting = self._connecting
        if connecting is None:
            connecting = self._connecting = asyncio.ensure_future(self._connect())
            connecting.add_done_callback(self._connected)
        # Shielded: one caller giving up does not abandon the others' connection.
        return await asyncio.shield(connecting)

    def _connected(self, connecting: asyncio.Future[_Replies]) -> None:
        self._connecting = None
        if not connecting.cancelled():
            connecting.exception()  # retrieved: the waiting callers raise it themselves

    async def _connect(self) -> _Replies:
        usable = self._usable()
        if usable is not None:
            return usable
        previous = self._replies
        connection = self._make()
        try:
            await connection.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        protocol = connection._writer.transport.get_protocol()  # type: ignore[union-attr]
        replies = _Replies(
            connection,
            protocol,
            _reader_for(connection),
            follows_master=self._follows_master,
            timeout=self._timeout,
        )
        replies.transport.set_protocol(replies)
        if previous is not None and previous.open:
            previous.retire()
        self._replies = replies
        return replies

    def retire(self) -> None:
        """New commands go to a new connection; this one closes once its replies are in."""
        replies = self._replies
        if replies is not None and replies.open:
            replies.retire()

    def close(self) -> None:
        """Close now; commands in flight fail with ``ConnectionError``."""
        replies = self._replies
        if replies is not None and replies.open:
            replies.fail(ConnectionError("Connection closed by the client"))


def _packer_for(connection: AbstractConnection) -> Callable[[Sequence[Any]], bytes]:
    """A command packer giving the bytes redis-py's ``pack_command`` gives: hiredis's (C,
    ~5 times faster: 3.6 vs 20 microseconds for a script call) when the connection
    encodes text as strict UTF-8, as hiredis does; redis-py's for anything hiredis
    refuses (its own error then names the bad argument) and for other encodings."""

    def redis_py(args: Sequence[Any]) -> bytes:
        return b"".join(connection.pack_command(*args))

    encoder = connection.encoder
    if codecs.lookup(encoder.encoding).name != "utf-8" or encoder.encoding_errors != "strict":
        return redis_py

    def packed(args: Sequence[Any]) -> bytes:
        try:
            command: bytes = hiredis.pack_command(tuple(args))
        except TypeError:
            return redis_py(args)
        return command

    return RecentCommands(packed)


class RecentCommands:
    """A packer that keeps the packed bytes of the commands it packed lately.

    The hot RPCs send the same commands over and over (a hot token's Check or lookup with
    the same keys and arguments, a hot cache key's read), and hiredis takes ~18,000
    instructions to pack a script call of twelve arguments (an int costs it as much as a
    string); finding it here costs ~9,000, most of it the tuple of types. A command is
    found only when equal argument by argument *and* of the same types (``1``, ``1.0``
    and ``True`` are equal in Python but not packed alike). Commands carrying bytes (cache
    values), long ones and big ones are never kept: hashing a value would cost more than
    packing it. Bounded; the oldest entry goes first (``recent.remember``).
    """

    MAX_ENTRIES: Final = 4096
    MAX_ARGUMENTS: Final = 16
    MAX_BYTES: Final = 512

    def __init__(self, pack: Callable[[Sequence[Any]], bytes]) -> None:
        self._pack = pack
        self._packed: dict[tuple[Any, ...], tuple[tuple[type, ...], bytes]] = {}

    def __len__(self) -> int:
        return len(self._packed)

    def __call__(self, args: Sequence[Any]) -> bytes:
        command = tuple(args)
        if len(command) > self.MAX_ARGUMENTS:
            return self._pack(command)
        types = tuple(map(type, command))
        if bytes in types:
            return self._pack(command)
        try:
            known = self._packed.get(command)
        except TypeError:  # an unhashable argument: the packer says what is wrong with it
            return self._pack(command)
        if known is not None and known[0] == types:
            return known[1]
        packed = self._pack(command)
        if len(packed) <= self.MAX_BYTES:
            remember(self._packed, command, (types, packed), self.MAX_ENTRIES)
        return packed


async def _nothing_to_close(error: Exception) -> None:
    """A failed shared connection closes itself; a caller that gave up leaves it usable."""


def _reader_for(connection: AbstractConnection) -> hiredis.Reader:
    """A reply parser configured as redis-py configures its own (hiredis)."""
    kwargs: dict[str, Any] = {
        "protocolError": InvalidResponse,
        "replyError": BaseParser.parse_error,
    }
    encoder = connection.encoder
    if encoder.decode_responses:
        kwargs["encoding"] = encoder.encoding
        kwargs["errors"] = encoder.encoding_errors
    return hiredis.Reader(**kwargs)
