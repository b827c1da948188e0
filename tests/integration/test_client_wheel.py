"""The tokenservice-client wheel works on its own: built, installed into a clean
virtualenv without grpcio-tools, it serves and calls a stub over a real gRPC channel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CLIENT_ROOT = REPO_ROOT / "clients" / "python"
CONSTRAINTS = REPO_ROOT / "requirements" / "constraints.txt"

pytestmark = pytest.mark.slow

# Runs inside the clean virtualenv: a CacheService servicer built from the generated
# code on 127.0.0.1:0, called through the convenience client.
SMOKE_SCRIPT = textwrap.dedent(
    """
    import asyncio
    import importlib.util

    import grpc
    from google.protobuf import any_pb2
    from google.rpc import code_pb2, error_details_pb2, status_pb2

    import tokenservice
    from tokenservice.client import TokenServiceClient, error_reason
    from tokenservice.v1 import cache_service_pb2 as cache
    from tokenservice.v1 import cache_service_pb2_grpc as cache_grpc
    from tokenservice.v1 import errors_pb2


    class Cache(cache_grpc.CacheServiceServicer):
        async def GetValue(self, request, context):
            if request.namespace != "recipes":
                name = errors_pb2.ErrorReason.Name(errors_pb2.ERROR_REASON_PERMISSION_DENIED)
                info = error_details_pb2.ErrorInfo(
                    reason=name.removeprefix("ERROR_REASON_"), domain="tokenservice"
                )
                detail = any_pb2.Any()
                detail.Pack(info)
                status = status_pb2.Status(
                    code=code_pb2.PERMISSION_DENIED, message="not your namespace", details=[detail]
                )
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    status.message,
                    trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
                )
            return cache.GetValueResponse(
                found=True,
                value=f"{request.namespace}/{request.key}".encode(),
                remaining_ttl_seconds=86400,
            )


    async def outcome(call):
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            return f"code={exc.code().name} reason={error_reason(exc)}"
        return "ok"


    async def main():
        server = grpc.aio.server()
        cache_grpc.add_CacheServiceServicer_to_server(Cache(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with TokenServiceClient.from_target(f"127.0.0.1:{port}") as client:
                hit = await client.cache.GetValue(
                    cache.GetValueRequest(namespace="recipes", key="popular_recipes")
                )
                value, ttl = hit.value.decode(), hit.remaining_ttl_seconds
                print(f"found={hit.found} value={value} ttl={ttl}")
                denied = client.cache.GetValue(cache.GetValueRequest(namespace="billing", key="k"))
                print(await outcome(denied))
                unimplemented = client.cache.SetValue(
                    cache.SetValueRequest(namespace="recipes", key="k", value=b"v")
                )
                print(await outcome(unimplemented))
        finally:
            await server.stop(None)


    print(f"grpc_tools_importable={importlib.util.find_spec('grpc_tools') is not None}")
    print(f"installed_in_venv={'site-packages' in tokenservice.__file__}")
    asyncio.run(main())
    """
)


def _run(cmd: list[str | Path], cwd: Path, timeout: float) -> str:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    result = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_wheel_serves_and_calls_a_stub_without_grpc_tools(tmp_path: Path) -> None:
    # Build from a copy so the build leaves no build/ or egg-info behind in the repo.
    source = tmp_path / "source"
    shutil.copytree(
        CLIENT_ROOT,
        source,
        ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"),
    )
    dist = tmp_path / "dist"
    _run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, source],
        cwd=tmp_path,
        timeout=120,
    )
    (wheel,) = dist.glob("tokenservice_client-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"tokenservice/__init__.py", "tokenservice/py.typed", "tokenservice/client.py"} <= names
    for stem in ("token_service", "client_registry", "cache_service", "errors"):
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"):
            assert f"tokenservice/v1/{stem}{suffix}" in names

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path, timeout=120)
    python = venv / "bin" / "python"
    _run(
        [python, "-m", "pip", "install", "-q", "-c", CONSTRAINTS, wheel],
        cwd=tmp_path,
        timeout=300,
    )
    script = tmp_path / "smoke.py"
    script.write_text(SMOKE_SCRIPT)

    output = _run([python, script], cwd=tmp_path, timeout=60)

    assert output.splitlines() == [
        "grpc_tools_importable=False",
        "installed_in_venv=True",
        "found=True value=recipes/popular_recipes ttl=86400",
        "code=PERMISSION_DENIED reason=PERMISSION_DENIED",
        "code=UNIMPLEMENTED reason=None",
    ]
