"""Configuration: arguments, then AUDITLAKE_* variables, then the TOML file."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditlake import sdk
from auditlake.sdk import BatchPolicy, ConfigurationError, RetryPolicy, SpoolPolicy
from auditlake.sdk._config import SETTINGS, load_settings
from auditlake.sdk.testing import InMemoryExporter


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


def test_every_variable_is_its_setting_upper_cased() -> None:
    # One name for each setting; tests/sdk/test_settings_table.py checks the docs.
    for name, (variable, _, _) in SETTINGS.items():
        assert variable == f"AUDITLAKE_{name.upper()}"


def test_the_issues_examples_configure() -> None:
    settings = sdk.configure(exporter=InMemoryExporter(), retry_max_attempts=2, batch_delay=0.05)
    assert settings.retry.max_attempts == 2
    assert settings.batch.schedule_delay == 0.05


def test_a_policy_object_with_one_of_its_own_settings_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"^batch_delay: given together with batch=.*schedule_delay"):
        sdk.configure(exporter=InMemoryExporter(), batch=BatchPolicy(), batch_delay=1)
    with pytest.raises(ConfigurationError, match="^spool_dir: given together with spool="):
        load_settings({"spool_dir": "/tmp/x"}, environ={}, spool=SpoolPolicy())
    # Another policy's settings are fine beside it.
    mixed = load_settings({"retry_max_attempts": 2}, environ={}, batch=BatchPolicy(max_batch_size=5))
    assert (mixed.batch.max_batch_size, mixed.retry.max_attempts) == (5, 2)


def test_a_policy_object_wins_over_variables_and_the_file(tmp_path: Path) -> None:
    config = tmp_path / "a.toml"
    config.write_text("batch_max_size = 9\n")
    environ = {"AUDITLAKE_CONFIG": str(config), "AUDITLAKE_BATCH_DELAY": "3"}
    assert load_settings(environ=environ).batch == BatchPolicy(max_batch_size=9, schedule_delay=3.0)
    assert load_settings(environ=environ, batch=BatchPolicy(max_batch_size=4)).batch == BatchPolicy(max_batch_size=4)


def test_toml_values_may_be_text_or_typed_and_a_wrong_type_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "a.toml"
    config.write_text('tls = "false"\nspool_enabled = false\nredact = "iban,pin"\nbatch_delay = 1\n')
    settings = load_settings(environ={"AUDITLAKE_CONFIG": str(config)})
    assert settings.tls is False  # not bool("false")
    assert settings.spool.enabled is False
    assert settings.redact == ("iban", "pin")
    assert settings.batch.schedule_delay == 1.0
    for line, says in (("tls = 1", "^tls: expected bool"), ('batch_max_size = "many"', "^batch_max_size: "),
                       ("queue_max_size = true", "^queue_max_size: expected int"), ("endpoint = 4317", "^endpoint:")):
        config.write_text(line + "\n")
        with pytest.raises(ConfigurationError, match=says):
            load_settings(environ={"AUDITLAKE_CONFIG": str(config)})


def test_a_bad_value_names_the_setting_and_the_policy_field() -> None:
    says = r"^retry_max_attempts: must be at least 1 \(RetryPolicy.max_attempts\)"
    with pytest.raises(ConfigurationError, match=says):
        sdk.configure(exporter=InMemoryExporter(), retry_max_attempts=0)
    with pytest.raises(ConfigurationError, match=r"^retry_jitter: must be between 0 and 1"):
        load_settings(environ={"AUDITLAKE_RETRY_JITTER": "1.5"})
    with pytest.raises(ConfigurationError, match="^spool_full: must be drop_newest or block"):
        load_settings({"spool_full": "explode"}, environ={})


def test_a_longer_first_backoff_raises_the_default_ceiling_but_not_an_explicit_one() -> None:
    assert load_settings({"retry_initial_backoff": 30}, environ={}).retry.max_backoff == 30
    with pytest.raises(ConfigurationError, match="^retry_max_backoff: must be at least initial_backoff"):
        load_settings({"retry_initial_backoff": 30, "retry_max_backoff": 5}, environ={})


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
    with pytest.raises(ConfigurationError, match=r"^batch_max_size: .*\(BatchPolicy.max_batch_size\)"):
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
