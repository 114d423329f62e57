"""`auditlake NAME` imports only NAME's module: `auditlake verify` starts
without pandas, gRPC or the admin server, and no subcommand is lost for it
(the map in collector/cli.py is the one list of who adds what)."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from auditlake.collector import cli

#: What `auditlake verify` must start without (the admin UI, the lake's
#: pandas-backed datasets, the SDK's gRPC exporter).
NOT_FOR_VERIFY = ("pandas", "grpc", "starlette", "uvicorn", "jinja2", "pyarrow.dataset", "auditlake.sdk")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1
    return dict(actions[0].choices)


def test_the_full_parser_has_exactly_the_mapped_subcommands() -> None:
    names = list(_subcommands(cli.build_parser()))
    assert names == [*cli.BUILTIN_COMMANDS, *cli.STAGE_COMMANDS]


@pytest.mark.parametrize("module", sorted(set(cli.STAGE_COMMANDS.values())))
def test_each_module_adds_the_names_the_map_gives_it(module: str) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    importlib.import_module(f"auditlake.collector.{module}").register(sub)
    assert sorted(sub.choices) == sorted(name for name, m in cli.STAGE_COMMANDS.items() if m == module)


@pytest.mark.parametrize("name", [*cli.BUILTIN_COMMANDS, *cli.STAGE_COMMANDS])
def test_a_subcommand_alone_reads_as_in_the_full_parser(name: str) -> None:
    lazy = _subcommands(cli.build_parser(name))
    assert name in lazy
    assert lazy[name].format_help() == _subcommands(cli.build_parser())[name].format_help()


@pytest.mark.parametrize(("argv", "named"), [
    (["verify", "--data", "d"], "verify"),
    (["--log-level", "DEBUG", "verify"], "verify"),
    (["--log-level=DEBUG", "verify"], "verify"),
    (["--log", "DEBUG", "proof", "x"], "proof"),  # argparse takes the prefix too
    (["--help"], None),
    (["-h", "verify"], None),
    (["--version"], None),
    (["--log-level", "DEBUG"], None),
    (["--", "verify"], None),
    ([], None),
])
def test_named_command_is_the_first_argument_that_is_no_option(argv: list[str], named: str | None) -> None:
    assert cli.named_command(argv) == named


def test_an_unknown_subcommand_lists_every_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["verfy"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for name in [*cli.BUILTIN_COMMANDS, *cli.STAGE_COMMANDS]:
        assert f"'{name}'" in err


def test_verify_help_imports_nothing_verify_does_not_use() -> None:
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "auditlake.collector", "verify", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: auditlake verify")
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "auditlake.collector.integrity.verify.run" in imported  # what verify needs is there
    assert not {m for m in imported if any(m == p or m.startswith(f"{p}.") for p in NOT_FOR_VERIFY)}
