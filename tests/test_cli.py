"""Every command line of the project through fastcifar.cli: one error form, --help, the same values with
and without fire, and output to a closed pipe that never stops a command."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cli_checks import assert_user_error, no_fire, run_module
from tiny_runs import command_line

REPO = Path(__file__).resolve().parents[1]
# Every command a user types (the module after `python -m`) with each of its subcommands.
TYPED = (
    "fastcifar.train, fastcifar.data prepare, fastcifar.data info, fastcifar.models, fastcifar.profile, "
    "fastcifar.analyze, fastcifar.evaluate, fastcifar.export, fastcifar.study list, fastcifar.study run, "
    "fastcifar.study report, bench.suite, bench.train, bench.compile_time, bench.kernels, bench.loaders, "
    "bench.augment, bench.prepare, bench.roofline"
)
COMMANDS = [(words[0], words[1:]) for words in (command.split() for command in TYPED.split(", "))]
WITH_SUBCOMMANDS = sorted({module for module, words in COMMANDS if words})
IDS = [" ".join([module, *words]) for module, words in COMMANDS]


def test_the_list_holds_every_command():
    """Each module with a __main__ block is in COMMANDS (a new command joins the checks below)."""
    found = set()
    for folder in ("fastcifar", "bench"):
        for path in (REPO / folder).rglob("*.py"):
            if 'if __name__ == "__main__":' in path.read_text(encoding="utf-8"):
                module = ".".join(path.relative_to(REPO).with_suffix("").parts)
                found.add(module.removesuffix(".__main__"))
    assert found == {module for module, _ in COMMANDS}


@pytest.mark.parametrize("fire", [True, False], ids=["fire", "without-fire"])
@pytest.mark.parametrize("module, words", COMMANDS, ids=IDS)
def test_a_mistyped_flag_is_one_line_and_help_lists_every_flag(module, words, fire, capsys, monkeypatch):
    with no_fire() if not fire else contextlib.nullcontext():
        mistyped = run_module(module, [*words, "--no_such_flag", "1"], capsys, monkeypatch)
        line = assert_user_error(mistyped, module, "unknown flag --no_such_flag", "valid flags:")
        helped = run_module(module, [*words, "--help"], capsys, monkeypatch)
    assert helped.returncode == 0 and helped.stderr == "", helped.stderr
    assert helped.stdout.startswith(f"usage: python -m {' '.join([module, *words])}")
    valid = re.findall(r"--\w+", line.split("valid flags:", 1)[1])
    assert valid or line.endswith("valid flags: (none)."), line
    for flag in valid:
        assert flag in helped.stdout, f"{flag} missing from {module} --help"


@pytest.mark.parametrize("module", WITH_SUBCOMMANDS)
def test_commands_are_shown_without_a_command_and_with_help(module, capsys, monkeypatch):
    subcommands = [words[0] for name, words in COMMANDS if name == module]
    assert_user_error(run_module(module, [], capsys, monkeypatch), module, "choose a command", *subcommands)
    helped = run_module(module, ["--help"], capsys, monkeypatch)
    assert helped.returncode == 0
    for word in subcommands:
        assert re.search(rf"^  {word} ", helped.stdout, re.M), helped.stdout
    assert_user_error(run_module(module, ["nope"], capsys, monkeypatch), module, "unknown command 'nope'")


def _record(calls):
    def function(folder: str, count: int = 1, rate: float = 0.5, name: str = "x", on: bool = False, **rest) -> None:
        calls.append({"folder": folder, "count": count, "rate": rate, "name": name, "on": on, **rest})

    return function


def test_the_same_values_with_and_without_fire(capsys):
    """fire dispatches where installed; without it the layer calls the function: same values either way."""
    from fastcifar.cli import run_cli

    argv = ["f", "--count", "3", "--rate=-1e-3", "--name", "2024", "--on", "-c", "7", "--model_kwargs", "{'a': None}"]
    argv += ["--list", "a,b"]
    with_fire: list[dict] = []
    run_cli(_record(with_fire), "t", argv=argv)
    without: list[dict] = []
    with no_fire():
        run_cli(_record(without), "t", argv=argv)
    assert with_fire == without
    assert with_fire[0] == {
        "folder": "f",
        "count": 7,  # -c is --count; the last one wins
        "rate": -1e-3,
        "name": "2024",  # a text flag stays text
        "on": True,
        "model_kwargs": {"a": None},
        "list": "a,b",  # an undeclared flag (**rest) reads as a literal, else as the text
    }


def test_model_kwargs_has_one_grammar_json_or_python():
    from fastcifar.cli import command, parse_value, signature_flags
    from fastcifar.profiling.record import profile_variants
    from fastcifar.train import train_command

    profile_flag = command(profile_variants).by_name["model_kwargs"]
    train_flag = train_command().by_name["model_kwargs"]
    assert signature_flags(profile_variants)[0][5] == profile_flag
    for flag in (profile_flag, train_flag):
        assert parse_value(flag, '{"impl": null, "k": 2}') == {"impl": None, "k": 2}
        assert parse_value(flag, "{'impl': None, 'k': 2}") == {"impl": None, "k": 2}
        assert parse_value(flag, '{"flag": true}') == {"flag": True}


def _closed_pipe() -> int:
    """The write end of a pipe whose reader is gone: every write to it fails with EPIPE."""
    read, write = os.pipe()
    os.close(read)
    return write


def _run_into_closed_pipe(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    write = _closed_pipe()
    try:
        return subprocess.run(
            [sys.executable, "-m", *args],
            cwd=cwd,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    finally:
        os.close(write)


def test_study_list_into_a_closed_pipe(tmp_path):
    """`python -m fastcifar.study list | head -1`: the reader leaves, the command ends normally."""
    done = _run_into_closed_pipe(["fastcifar.study", "list"], tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr


@pytest.mark.slow
def test_training_into_a_closed_pipe_finishes_the_run(tiny_flags, tmp_path):
    """`python -m fastcifar.train ... | head -1`: printing to the closed pipe never stops the run."""
    out = tmp_path / "run"
    done = _run_into_closed_pipe(["fastcifar.train", *command_line({**tiny_flags, "out": out})], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
    assert (out / "summary.json").is_file()
