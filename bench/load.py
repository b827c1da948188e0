"""Load generators: separate processes, each with one grpc.aio channel.

* closed loop: ``concurrency`` calls in flight per process, each starting the next as soon
  as it returns (the throughput at that concurrency);
* open loop: calls started on a fixed schedule (``rate`` per second over all processes)
  whatever the answers do; latency is measured from the *scheduled* start, so a stalled
  server is not hidden by the generator waiting for it (no coordinated omission);
* interleaved: a closed loop that alternates between two calls (the baseline's and the
  scenario's, built on the same channel) in segments of ``segment`` seconds in the order
  B S S B B S S B ... (:func:`abba`), so that a drift of the machine's speed falls on
  both alike; each process returns its calls per segment.

Only calls that complete inside the measured window ``[start + warmup, end]`` count (in
the interleaved loop: only calls of the segment's kind that complete inside it, after its
first ``settle`` seconds).
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

#: Calls outstanding per process in open loop beyond which the schedule is abandoned
#: (the offered load is above what the server sustains; reported as ``dropped``).
MAX_OUTSTANDING = 2000


@dataclass(frozen=True)
class Job:
    scenario: str
    data: dict[str, Any]
    target: str
    worker: int
    workers: int
    start: float  # wall clock (time.time) of the first call
    warmup: float
    duration: float  # measured seconds after the warmup
    concurrency: int = 0  # closed loop when > 0
    rate: float = 0.0  # open loop, calls per second for this process
    max_calls: int = 0  # closed loop: stop after this many calls (0: no limit)
    keep_results: bool = False  # return what the calls returned (e.g. issued tokens)
    # interleaved (closed loop, ``concurrency`` > 0): the scenario named here (the
    # baseline) alternates with ``scenario`` in segments of ``segment`` seconds
    alternate: str = ""
    alternate_data: dict[str, Any] | None = None
    segment: float = 0.0
    settle: float = 0.0  # seconds at the start of each segment not counted


def abba(segments: int) -> list[bool]:
    """The kinds of ``segments`` consecutive segments, True for the baseline: B S S B B S
    S B ... Each adjacent pair (0-1, 2-3, ...) holds one of each kind, and every four
    segments put both kinds at the same mean time, so a linear drift cancels."""
    return [(index % 2 == 0) == (index // 2 % 2 == 0) for index in range(segments)]


def segment_count(seconds: float, segment: float) -> int:
    """Segments in an interleaved window of about ``seconds``: whole ABBA blocks, one at
    least."""
    return 4 * max(1, round(seconds / (4 * segment)))


def interleaved_figures(counts: list[int], segment: float, settle: float = 0.0) -> dict[str, Any]:
    """Rates and ratios of an interleaved window from its calls per segment (summed over
    the load processes, each counted over its last ``segment - settle`` seconds), in the
    order of :func:`abba`.

    ``ratio`` is sum(S) / sum(B) over the window (the verdict); ``pair_ratios`` is S / B of
    each adjacent pair, whose spread shows how much the machine moved within the window."""
    kinds = abba(len(counts))
    base = sum(c for c, is_base in zip(counts, kinds, strict=True) if is_base)
    own = sum(c for c, is_base in zip(counts, kinds, strict=True) if not is_base)
    per_kind = len(counts) // 2 * (segment - settle)  # seconds counted of each kind
    pairs: list[float | None] = []
    for index in range(0, len(counts) - 1, 2):
        first, second = counts[index], counts[index + 1]
        b, s = (first, second) if kinds[index] else (second, first)
        pairs.append(s / b if b else None)
    known = [p for p in pairs if p is not None]
    return {
        "segments": len(counts),
        "segment": segment,
        "settle": settle,
        "order": "".join("B" if k else "S" for k in kinds),
        "counts": counts,
        "baseline_rps": base / per_kind if per_kind else 0.0,
        "scenario_rps": own / per_kind if per_kind else 0.0,
        "ratio": own / base if base else None,
        "pair_ratios": pairs,
        "pair_min": min(known) if known else None,
        "pair_max": max(known) if known else None,
    }


def run_job(job: Job) -> dict[str, Any]:
    try:
        import uvloop

        return uvloop.run(_run(job))
    except ImportError:
        return asyncio.run(_run(job))


async def _run(job: Job) -> dict[str, Any]:
    from bench.scenarios import SCENARIOS

    options = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(job.target, options=options) as channel:
        await channel.channel_ready()
        call = SCENARIOS[job.scenario].make_call(channel, job.data, job.worker, job.workers)
        base = (
            SCENARIOS[job.alternate].make_call(
                channel, job.alternate_data or {}, job.worker, job.workers
            )
            if job.alternate
            else None
        )
        delay = job.start - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        begin = time.perf_counter()
        if base is not None:
            # every process's segments must fall on the same wall-clock instants: anchor
            # them on ``start`` itself, not on when this sleep happened to end
            began = begin - (time.time() - job.start)
            return await _interleaved(job, base, call, began + job.warmup)
        window = (begin + job.warmup, begin + job.warmup + job.duration)
        if job.concurrency:
            return await _closed(job, call, window)
        return await _open(job, call, begin, window)


async def _closed(job: Job, call: Any, window: tuple[float, float]) -> dict[str, Any]:
    latencies: list[float] = []
    results: list[Any] = []
    errors: list[str] = []
    issued = 0
    clock = time.perf_counter

    async def loop() -> None:
        nonlocal issued
        while clock() < window[1] and not (job.max_calls and issued >= job.max_calls):
            issued += 1
            started = clock()
            try:
                result = await call()
            except Exception as exc:
                errors.append(_describe(exc))
                continue
            done = clock()
            if job.keep_results:
                results.append(result)
            if window[0] <= started and done <= window[1]:
                latencies.append(done - started)

    await asyncio.gather(*(loop() for _ in range(job.concurrency)))
    return {
        "latencies": latencies,
        "errors": len(errors),
        "error_sample": errors[:3],
        "results": results,
        "dropped": 0,
    }


async def _interleaved(
    job: Job,
    base: Callable[[], Awaitable[Any]],
    own: Callable[[], Awaitable[Any]],
    first: float,
) -> dict[str, Any]:
    """``concurrency`` loops, each call chosen by the segment its start falls in: in the
    warmup, the scenario's first half and the baseline's second half; then :func:`abba`.
    A segment counts the calls of its kind that complete inside it after its first
    ``settle`` seconds: by then every call in flight is of its kind (the previous kind's
    have drained), so what it counts is that kind's steady rate."""
    segment, settle = job.segment, job.settle
    kinds = abba(round(job.duration / segment))
    counts = [0] * len(kinds)
    segment_errors = [0] * len(kinds)
    errors: list[str] = []
    end = first + len(kinds) * segment
    clock = time.perf_counter

    async def loop() -> None:
        while (started := clock()) < end:
            index = math.floor((started - first) / segment)
            is_base = kinds[index] if index >= 0 else started >= first - job.warmup / 2
            try:
                await (base if is_base else own)()
            except Exception as exc:
                errors.append(_describe(exc))
                if index >= 0:
                    segment_errors[index] += 1
                continue
            done = clock() - first
            landed = math.floor(done / segment)
            if (
                0 <= landed < len(kinds)
                and kinds[landed] == is_base
                and done - landed * segment >= settle
            ):
                counts[landed] += 1

    await asyncio.gather(*(loop() for _ in range(job.concurrency)))
    return {
        "latencies": [],
        "segments": counts,
        "segment_errors": segment_errors,
        "errors": len(errors),
        "error_sample": errors[:3],
        "results": [],
        "dropped": 0,
    }


async def _open(job: Job, call: Any, begin: float, window: tuple[float, float]) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    clock = time.perf_counter
    interval = 1.0 / job.rate
    pending: set[asyncio.Task[None]] = set()
    dropped = 0

    async def one(scheduled: float) -> None:
        try:
            await call()
        except Exception as exc:
            errors.append(_describe(exc))
            return
        done = clock()
        if window[0] <= scheduled and done <= window[1] + 5:
            latencies.append(done - scheduled)

    number = 0
    while True:
        scheduled = begin + number * interval
        if scheduled >= window[1]:
            break
        now = clock()
        if scheduled > now:
            await asyncio.sleep(scheduled - now)
        if len(pending) >= MAX_OUTSTANDING:
            dropped += 1
        else:
            task = asyncio.create_task(one(scheduled))
            pending.add(task)
            task.add_done_callback(pending.discard)
        number += 1
    if pending:
        await asyncio.wait(pending, timeout=10)
    return {
        "latencies": latencies,
        "errors": len(errors),
        "error_sample": errors[:3],
        "results": [],
        "dropped": dropped,
    }


def _describe(exc: Exception) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


class LoadPool:
    """``workers`` spawned processes, reused by every phase (spawning costs ~1 s each)."""

    def __init__(self, workers: int, cpus: set[int] | None = None) -> None:
        self.workers = workers
        self._pool = multiprocessing.get_context("spawn").Pool(
            workers, initializer=_confine, initargs=(cpus,)
        )
        self._pool.map(_warm, range(workers))

    def start(self, jobs: list[Job]) -> Any:
        return self._pool.map_async(run_job, jobs)

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()


def _confine(cpus: set[int] | None) -> None:
    """Each load process on ``cpus`` (None: anywhere), before it starts any thread."""
    if cpus is not None:
        os.sched_setaffinity(0, cpus)


def _warm(_: int) -> None:
    import bench.scenarios  # noqa: F401 - import grpc and the stubs once per process
