"""Load generators: separate processes, each with one grpc.aio channel.

* closed loop: ``concurrency`` calls in flight per process, each starting the next as soon
  as it returns (the throughput at that concurrency);
* open loop: calls started on a fixed schedule (``rate`` per second over all processes)
  whatever the answers do; latency is measured from the *scheduled* start, so a stalled
  server is not hidden by the generator waiting for it (no coordinated omission).

Only calls that complete inside the measured window ``[start + warmup, end]`` count.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
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
        delay = job.start - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        begin = time.perf_counter()
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

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = multiprocessing.get_context("spawn").Pool(workers)
        self._pool.map(_warm, range(workers))

    def start(self, jobs: list[Job]) -> Any:
        return self._pool.map_async(run_job, jobs)

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()


def _warm(_: int) -> None:
    import bench.scenarios  # noqa: F401 - import grpc and the stubs once per process
