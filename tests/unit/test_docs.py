"""The README's configuration table lists every setting the server reads."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from tokenservice_server.config import ENV_PREFIX, Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def _settings(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.extend(_settings(annotation, (*prefix, name)))
        else:
            found.append((*prefix, name))
    return found


def test_every_setting_is_documented_with_its_variable() -> None:
    text = README.read_text(encoding="utf-8")
    missing = []
    for path in _settings(Settings):
        row = f"| `{'.'.join(path)}` | `{ENV_PREFIX}{'__'.join(path).upper()}`"
        if row not in text:
            missing.append(".".join(path))
    assert not missing, f"README configuration table lacks: {missing}"
