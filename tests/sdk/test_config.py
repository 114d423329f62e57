"""Configuration: arguments, then AUDITLAKE_* variables, then the TOML file."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditlake.sdk import BatchPolicy, ConfigurationError, RetryPolicy, SpoolPolicy
from auditlake.sdk._config import SETTINGS, load_settings


def test_defaults() -> None:
    settings = load_settings(environ={})
    assert settings.endpoint == "127.0.0.1:4317"
    assert settings.batch == BatchPolicy(max_batch_size=2048, schedule_delay=0.2)
    assert settings.spool.full == "drop_newest"
    assert settings.durable_timeout == 5.0


def test_arguments_beat_environment_which_beats_the_file(tmp_path: Path) -> None:
    config = tmp_path / "auditlake.toml"
    config.write_text(
        '[auditlake]\nendpoint = "file:1"\napi_key = "file-key"\nservice_name = "file-svc"\n'
        "batch_max_size = 7\n"
    )
    environ = {"AUDITLAKE_CONFIG": str(config), "AUDITLAKE_API_KEY": "env-key",
               "AUDITLAKE_SERVICE_NAME": "env-svc"}
    settings = load_settings({"service_name": "arg-svc"}, environ=environ)
    assert settings.endpoint == "file:1"
    assert settings.api_key == "env-key"
    assert settings.service_name == "arg-svc"
    assert settings.batch.max_batch_size == 7


def test_every_setting_has_an_auditlake_variable() -> None:
    assert all(variable.startswith("AUDITLAKE_") for variable, _, _ in SETTINGS.values())
    docs = Path(__file__).resolve().parents[2] / "docs" / "sdk.md"
    if docs.exists():
        text = docs.read_text()
        for variable, _, _ in SETTINGS.values():
            assert variable in text, f"{variable} is not documented in docs/sdk.md"


def test_spool_directory_defaults_to_the_service_cache(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    settings = load_settings({"service_name": "my app"}, environ={})
    assert settings.spool_directory == tmp_path / "auditlake" / "spool" / "my_app"
    explicit = load_settings({"spool_dir": str(tmp_path / "s")}, environ={})
    assert explicit.spool_directory == tmp_path / "s"


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: RetryPolicy(max_attempts=0), "max_attempts"),
        (lambda: RetryPolicy(initial_backoff=1, max_backoff=0.5), "max_backoff"),
        (lambda: RetryPolicy(jitter=2), "jitter"),
        (lambda: BatchPolicy(max_batch_size=0), "max_batch_size"),
        (lambda: BatchPolicy(max_batch_size=10, max_queue_size=5), "max_queue_size"),
        (lambda: SpoolPolicy(full="explode"), "full"),  # type: ignore[arg-type]
        (lambda: SpoolPolicy(max_bytes=0), "max_bytes"),
    ],
)
def test_bad_policy_values_are_value_errors_naming_the_field(build, field) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=f"^{field}:"):
        build()


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="AUDITLAKE_BATCH_MAX_SIZE"):
        load_settings(environ={"AUDITLAKE_BATCH_MAX_SIZE": "many"})
    with pytest.raises(ConfigurationError, match="max_batch_size"):
        load_settings(environ={"AUDITLAKE_BATCH_MAX_SIZE": "0"})


def test_unknown_key_in_the_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "a.toml"
    config.write_text('endpoint = "x:1"\nendpiont = "typo"\n')
    with pytest.raises(ConfigurationError, match="endpiont"):
        load_settings(environ={"AUDITLAKE_CONFIG": str(config)})


@pytest.mark.parametrize("given, target, tls", [
    ("localhost", "localhost:4317", False),  # gRPC alone would dial 443
    ("https://audit.example.com", "audit.example.com:4317", True),
    ("10.0.0.5:5000", "10.0.0.5:5000", False),
    ("ipv4:10.0.0.1,10.0.0.2:5000", "ipv4:10.0.0.1:4317,10.0.0.2:5000", False),
    ("dns:///collectors.internal", "dns:///collectors.internal:4317", False),
    ("::1", "[::1]:4317", False),
])
def test_an_endpoint_without_a_port_means_4317(given: str, target: str, tls: bool) -> None:
    from auditlake.sdk._exporter import parse_endpoint

    assert parse_endpoint(given) == (target, tls)
    assert load_settings(environ={"AUDITLAKE_ENDPOINT": given}).endpoint == given


@pytest.mark.parametrize("given, says", [
    ("host:abc", "port 'abc'"), ("host:70000", "port '70000'"), ("x y", "not a host"),
    ("ftp://x", "gRPC target"), ("ipv4:", "empty address"), ("a,b", "gRPC target"),
])
def test_a_garbage_endpoint_is_refused_at_configure(given: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        load_settings(environ={"AUDITLAKE_ENDPOINT": given})
