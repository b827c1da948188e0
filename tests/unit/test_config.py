"""Configuration layering and validation (no servers needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenservice_server.config import ConfigError, RedisTopology, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("TOKENSERVICE_"):
            monkeypatch.delenv(name)


def test_defaults_use_the_embedded_valkey_on_loopback() -> None:
    settings = load_settings()
    assert settings.listen == "127.0.0.1:50051"
    assert settings.metrics_listen == "127.0.0.1:9464"
    assert settings.redis.topology is RedisTopology.EMBEDDED
    assert (settings.redis.auth_db, settings.redis.cache_db) == (0, 1)


def test_flag_beats_environment_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "tokenservice.yaml"
    config.write_text(
        "listen: 127.0.0.1:7000\nmetrics_listen: 127.0.0.1:7001\n"
        "redis:\n  url: redis://from-file:6379\n  data_dir: /srv/data\n"
    )
    monkeypatch.setenv("TOKENSERVICE_REDIS__URL", "redis://from-env:6379")
    monkeypatch.setenv("TOKENSERVICE_METRICS_LISTEN", "127.0.0.1:7101")

    settings = load_settings(config, {"listen": "127.0.0.1:7200"})

    assert settings.listen == "127.0.0.1:7200"
    assert settings.metrics_listen == "127.0.0.1:7101"
    assert settings.redis.url == "redis://from-env:6379"
    assert settings.redis.data_dir == Path("/srv/data")
    assert settings.redis.topology is RedisTopology.STANDALONE


def test_sentinel_topology_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENSERVICE_REDIS__SENTINELS", '["10.0.0.1:26379","10.0.0.2:26379"]')
    monkeypatch.setenv("TOKENSERVICE_REDIS__MASTER_NAME", "auth")
    settings = load_settings()
    assert settings.redis.topology is RedisTopology.SENTINEL
    assert settings.redis.sentinels == ["10.0.0.1:26379", "10.0.0.2:26379"]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"listen": "nope"}, "listen"),
        ({"metrics_listen": "127.0.0.1:99999"}, "metrics_listen"),
        ({"redis": {"url": "http://redis:6379"}}, "redis.url"),
        ({"redis": {"sentinels": ["host-without-port"]}}, "redis.sentinels"),
        ({"redis": {"url": "redis://a:1", "cache_db": 0}}, "redis"),
        ({"redis": {"tls": {"cert_file": "/x.pem"}}}, "redis.tls"),
        ({"shutdown_grace": -1}, "shutdown_grace"),
        ({"log_format": "xml"}, "log_format"),
        ({"unknown_setting": 1}, "unknown_setting"),
    ],
)
def test_invalid_settings_name_the_setting(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, overrides)
    assert f"invalid setting {named} " in str(caught.value)


def test_invalid_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENSERVICE_REDIS__AUTH_DB", "99")
    with pytest.raises(ConfigError, match="TOKENSERVICE_REDIS__AUTH_DB"):
        load_settings()


def test_config_file_must_be_a_mapping(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_settings(config)


def test_secrets_do_not_show_in_repr() -> None:
    settings = load_settings(None, {"redis": {"url": "redis://h:1", "password": "hunter2"}})
    assert "hunter2" not in repr(settings)
    assert settings.redis.password is not None
    assert settings.redis.password.get_secret_value() == "hunter2"
