"""HTTP load on Envoy: ``wrk`` when installed (``apt-get install wrk``), else a small
asyncio HTTP/1.1 keep-alive generator in the load processes (slower: it saturates before
Envoy does, so its figures are a lower bound)."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from typing import Any

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(port: int, token: str, *, connections: int, seconds: float) -> dict[str, Any]:
    argv = [
        "wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
        "-H", f"Authorization: Bearer {token}",
        f"http://127.0.0.1:{port}/recipes",
    ]  # fmt: skip
    output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", output).group(1))  # type: ignore[union-attr]
    percentiles = {}
    for label, value, unit in re.findall(r"^\s+(50|90|99)%\s+([0-9.]+)(us|ms|s|m)$", output, re.M):
        percentiles[f"p{label}"] = float(value) * _UNITS[unit] * 1000
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = int(non_2xx.group(1)) if non_2xx else 0
    return {"tool": "wrk", "throughput": rps, "errors": errors, **percentiles}


def python_job(args: tuple[int, str, int, float]) -> dict[str, Any]:
    return asyncio.run(_python(*args))


async def _python(port: int, token: str, connections: int, seconds: float) -> dict[str, Any]:
    request = (
        f"GET /recipes HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            if b" 200 " not in status:
                errors += 1
            latencies.append(time.perf_counter() - started)
        writer.close()

    await asyncio.gather(*(loop() for _ in range(connections)))
    return {"latencies": latencies, "errors": errors}
