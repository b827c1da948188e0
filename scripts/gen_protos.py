"""Generate the committed Python stubs of proto/tokenservice/v1 into clients/python.

Runs grpc_tools.protoc with the protobuf, gRPC and mypy-protobuf (.pyi) generators over
every ``proto/tokenservice/v1/*.proto``. Output is deterministic, so re-running on
unchanged protos leaves the tree byte-identical; generated files whose proto is gone
are removed.

Usage::

    python scripts/gen_protos.py            # regenerate into clients/python
    python scripts/gen_protos.py --check    # exit 1 if the committed code drifted
    python scripts/gen_protos.py --out DIR  # generate into DIR instead

Tests import this file and call :func:`generate` and :func:`diff_trees`.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = [
    "CLIENT_ROOT",
    "GENERATED_GLOBS",
    "PACKAGE_DIR",
    "PROTO_ROOT",
    "build_descriptor_set",
    "diff_trees",
    "generate",
    "generated_files",
    "main",
    "proto_files",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
CLIENT_ROOT = REPO_ROOT / "clients" / "python"
# Proto package tokenservice.v1 -> Python package tokenservice.v1.
PACKAGE_DIR = Path("tokenservice") / "v1"
# Everything the generators write; anything else in PACKAGE_DIR is hand-written.
GENERATED_GLOBS = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py", "*_pb2_grpc.pyi")


def proto_files(proto_root: Path = PROTO_ROOT) -> list[str]:
    """Return the protos to compile, relative to ``proto_root``, in a stable order."""
    return sorted(
        p.relative_to(proto_root).as_posix() for p in (proto_root / PACKAGE_DIR).glob("*.proto")
    )


def _well_known_include() -> Path:
    """Directory of the google/protobuf/*.proto files bundled with grpcio-tools."""
    spec = importlib.util.find_spec("grpc_tools")  # a dev-only dependency
    if spec is None or spec.origin is None:
        raise SystemExit("grpcio-tools is not installed; run `make gen` to get it")
    return Path(spec.origin).resolve().parent / "_proto"


def _plugin(name: str) -> str:
    """Path of a protoc plugin installed next to this interpreter (the venv's bin/)."""
    # Not resolved: sys.executable is usually a symlink out of the venv.
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise SystemExit(f"{name} not found next to {sys.executable}; install mypy-protobuf")
    return f"--plugin={name}={path}"


def _protoc(args: list[str], proto_root: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={proto_root}",
        f"--proto_path={_well_known_include()}",
        *args,
        *proto_files(proto_root),
    ]
    result = subprocess.run(cmd, cwd=proto_root, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"protoc failed ({result.returncode}):\n{result.stderr}")


def generated_files(root: Path) -> list[Path]:
    """Generated files under ``root`` (a client root like clients/python), relative to it."""
    found = {p for pattern in GENERATED_GLOBS for p in (root / PACKAGE_DIR).glob(pattern)}
    return sorted(p.relative_to(root) for p in found)


def generate(out_root: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Generate all stubs into ``out_root`` and remove stale generated files there.

    Returns the generated files relative to ``out_root``.
    """
    with tempfile.TemporaryDirectory(prefix="gen_protos_") as tmp:
        staging = Path(tmp)
        _protoc(
            [
                _plugin("protoc-gen-mypy"),
                _plugin("protoc-gen-mypy_grpc"),
                f"--python_out={staging}",
                f"--grpc_python_out={staging}",
                f"--mypy_out={staging}",
                f"--mypy_grpc_out={staging}",
            ],
            proto_root,
        )
        fresh = generated_files(staging)
        for stale in set(generated_files(out_root)) - set(fresh):
            (out_root / stale).unlink()
        for rel in fresh:
            target = out_root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            # Only touch files whose bytes change, so mtimes of unchanged stubs stay put.
            if not target.exists() or not filecmp.cmp(staging / rel, target, shallow=False):
                shutil.copyfile(staging / rel, target)
    return fresh


def build_descriptor_set(out_file: Path, proto_root: Path = PROTO_ROOT) -> None:
    """Write a FileDescriptorSet of the protos, with comments (source info), to ``out_file``."""
    _protoc(["--include_source_info", f"--descriptor_set_out={out_file}"], proto_root)


def diff_trees(expected_root: Path, actual_root: Path) -> list[str]:
    """Describe every generated file that differs between two client roots; empty if none."""
    expected = set(generated_files(expected_root))
    actual = set(generated_files(actual_root))
    problems = [f"missing: {p}" for p in sorted(expected - actual)]
    problems += [f"stale: {p}" for p in sorted(actual - expected)]
    problems += [
        f"differs: {p}"
        for p in sorted(expected & actual)
        if (expected_root / p).read_bytes() != (actual_root / p).read_bytes()
    ]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=CLIENT_ROOT, help="client root to write into")
    parser.add_argument(
        "--check",
        action="store_true",
        help="generate into a temporary directory and fail if --out differs from it",
    )
    args = parser.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory(prefix="gen_protos_check_") as tmp:
            generate(Path(tmp))
            problems = diff_trees(Path(tmp), args.out)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("generated code is out of date: run `make gen`", file=sys.stderr)
        return 1 if problems else 0
    for rel in generate(args.out):
        print(args.out / rel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
