"""docs/sdk.md's settings table is the code's: every row a configure()
keyword, an AUDITLAKE_* variable and a TOML key of the same name, with the
documented default; every policy field a setting."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from auditlake import sdk
from auditlake.sdk import BatchPolicy, RetryPolicy, SpoolPolicy
from auditlake.sdk._config import POLICY_FIELDS, SETTINGS, _boolean, _names, load_settings
from auditlake.sdk.testing import InMemoryExporter

DOCS = Path(__file__).resolve().parents[2] / "docs" / "sdk.md"
POLICIES = {"batch": BatchPolicy, "retry": RetryPolicy, "spool": SpoolPolicy}


def _table(header: str) -> list[list[str]]:
    """The cells of the docs/sdk.md table whose header row starts with ``header``."""
    lines = DOCS.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(header)]
    assert len(starts) == 1, f"one table headed {header!r} in docs/sdk.md, found {len(starts)}"
    rows = []
    for line in lines[starts[0] + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _code(cell: str) -> str:
    """The first `code` in a cell; "" for an empty value (`""` or —)."""
    match = re.match(r"`([^`]*)`", cell)
    if match is None:
        assert cell.startswith("—"), f"expected `value` or —, got {cell!r}"
        return ""
    text = match.group(1)
    return "" if text == '""' else text


SETTING_ROWS = {_code(row[0]): row for row in _table("| setting | variable | default |")}


def test_every_row_is_a_setting_with_its_variable_and_default() -> None:
    for name, (_, variable, default, _) in SETTING_ROWS.items():
        assert name in SETTINGS, f"docs/sdk.md lists {name!r}, which is not in SETTINGS"
        env, parse, value = SETTINGS[name]
        assert _code(variable) == env, f"{name}: docs say {variable}, the code reads {env}"
        documented = parse(_code(default))
        assert documented == value, f"{name}: docs say the default is {default}, the code has {value!r}"


def test_every_setting_is_in_the_table() -> None:
    missing = sorted(set(SETTINGS) - set(SETTING_ROWS))
    assert not missing, f"settings missing from docs/sdk.md's table: {missing}"


def test_every_setting_is_a_keyword_of_configure() -> None:
    parameters = inspect.signature(sdk.configure).parameters
    for name in SETTINGS:
        assert name in parameters, f"configure() has no {name}= keyword"
        assert parameters[name].default is None, f"configure({name}=...) must default to None (unset)"


def test_policy_fields_and_settings_are_one_set_of_values() -> None:
    documented = {_code(field): _code(setting) for field, setting in _table("| field | setting |")}
    for kind, cls in POLICIES.items():
        for field in dataclasses.fields(cls):
            qualified = f"{cls.__name__}.{field.name}"
            settings = [name for name, (k, f) in POLICY_FIELDS.items() if (k, f) == (kind, field.name)]
            assert len(settings) == 1, f"{qualified} needs exactly one setting in POLICY_FIELDS, has {settings}"
            assert documented.get(qualified) == settings[0], f"docs/sdk.md must map {qualified} to {settings[0]}"
            default = SETTINGS[settings[0]][2]
            assert field.default == (default or None if field.name == "directory" else default), qualified
    assert len(documented) == len(POLICY_FIELDS)


# A value other than the default for each setting, so that arriving is visible.
SPECIAL_SAMPLES: dict[str, Any] = {
    "endpoint": "audit.example.com:5000",
    "spool_full": "block",
    "queue_max_size": 60_000,
}


def _sample(name: str, tmp_path: Path) -> Any:
    if name in SPECIAL_SAMPLES:
        return SPECIAL_SAMPLES[name]
    if name == "spool_dir":
        return str(tmp_path / "spool")
    _, parse, default = SETTINGS[name]
    if parse is _boolean:
        return not default
    if parse is _names:
        return ("iban", "pin")
    if parse is int:
        return default + 1
    if parse is float:
        return default / 2 if default > 1 else default * 2 if default else 1.0
    if parse is str:
        return f"sample-{name}"
    raise AssertionError(f"{name}: add a sample value for its parser to SPECIAL_SAMPLES")


def _expected(name: str, value: Any) -> Any:
    return Path(value) if name == "spool_dir" else value


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def _as_toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\") + '"'
    return repr(value)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_each_setting_arrives_the_same_three_ways(name: str, tmp_path: Path) -> None:
    value = _sample(name, tmp_path)
    assert value != SETTINGS[name][2], f"{name}: the sample must differ from the default"
    expected = _expected(name, value)
    variable = SETTINGS[name][0]
    config = tmp_path / "auditlake.toml"
    config.write_text(f"[auditlake]\n{name} = {_as_toml(value)}\n")

    assert load_settings({name: value}, environ={}).get(name) == expected, "as an argument"
    assert load_settings(environ={variable: _as_text(value)}).get(name) == expected, "as a variable"
    assert load_settings(environ={"AUDITLAKE_CONFIG": str(config)}).get(name) == expected, "as a TOML key"


def test_configure_takes_every_setting_at_once(tmp_path: Path) -> None:
    samples = {name: _sample(name, tmp_path) for name in SETTINGS}
    settings = sdk.configure(exporter=InMemoryExporter(), **samples)
    for name, value in samples.items():
        assert settings.get(name) == _expected(name, value), name
