"""The one command-line layer: every ``python -m`` command of the project goes through :func:`run_cli`.

A command is a function (or a dict of functions, one per subcommand). Its flags are declared once:
by the function's signature and the ``Args:`` of its docstring, or by a list of :class:`Flag`
(as :class:`fastcifar.training.config.TrainConfig` declares the training flags). From that one
declaration the layer

- checks the whole command line before anything runs: fire alone reports an unknown flag only
  after the function returned (after a whole training run) and binds a stray word to the next
  positional parameter (``--out x 3`` once set the learning rate to 3.0);
- parses every value with the one parser of its kind (:data:`VALUE_KINDS`), whichever library
  dispatches, so ``--model_kwargs`` takes JSON and Python literals alike everywhere;
- prints ``--help``;
- dispatches with fire, the project's CLI library, or, where fire is not installed (the GPU
  machine), calls the function itself with the same parsed values;
- turns a :class:`~fastcifar.errors.UserError` into one line ``<prog>: error: <message>`` and
  exit 2, and Ctrl-C into ``<prog>: interrupted`` and exit 130;
- keeps printing to a closed pipe (``| head -1``) from stopping the command.

``prog`` is the module as typed after ``python -m`` (``fastcifar.train``, ``bench.suite``).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import inspect
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastcifar.environment import is_rank_zero
from fastcifar.errors import UserError

__all__ = [
    "Command",
    "Flag",
    "VALUE_KINDS",
    "command",
    "parse_command_line",
    "parse_value",
    "run_cli",
    "scan_command_line",
    "signature_flags",
    "to_mapping",
]

# ------------------------------------------------------------------------------------------
# One parser per kind of value. Each takes the flag's name and a value (a string from the command
# line, or a Python value from a caller) and returns the value or raises UserError naming the flag.


def to_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.lower() in ("true", "yes", "1")
    raise UserError(f"--{name} takes true or false, got {value!r}.")


def to_int(name: str, value: Any) -> int:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"--{name} must be an integer, got {value!r}.")
    return value


def to_float(name: str, value: Any) -> float:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"--{name} must be a number, got {value!r}.")
    return float(value)


def to_literal(name: str, value: Any) -> Any:
    """A Python literal or JSON value where the text is one (``3``, ``True``, ``[1, 2]``, ``null``), else the text."""
    if not isinstance(value, str):
        return value
    for parse in (ast.literal_eval, json.loads):
        with contextlib.suppress(ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return parse(value)
    return value


def to_str(name: str, value: Any) -> str:
    """The text as given (``--out 2024`` is the folder "2024"); a quoted Python string loses its quotes."""
    if isinstance(value, str):
        unquoted = to_literal(name, value)
        return unquoted if isinstance(unquoted, str) else value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise UserError(f"--{name} takes a text value, got {value!r}.")


def to_mapping(name: str, value: Any) -> dict[str, Any]:
    """A dict of option names to values, as JSON (``{"impl": null}``) or a Python literal (``{'impl': None}``)."""
    if isinstance(value, str):
        value = to_literal(name, value)
        if isinstance(value, str):
            raise UserError(f"--{name} must be a dict such as '{{\"growth_rate\": 12}}', got {value!r}.")
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise UserError(f"--{name} must be a dict of option names to values, got {value!r}.")
    return dict(value)


def to_list(name: str, value: Any) -> tuple[Any, ...]:
    """Comma-separated items (``a,b`` or ``1,2``) or a literal list; each item as :func:`to_literal` reads it."""
    if isinstance(value, str):
        parsed = to_literal(name, value)
        if isinstance(parsed, (list, tuple)):
            return tuple(parsed)
        return tuple(to_literal(name, item.strip()) for item in value.split(",") if item.strip())
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,)


VALUE_KINDS: dict[str, Callable[[str, Any], Any]] = {
    "bool": to_bool,
    "int": to_int,
    "float": to_float,
    "str": to_str,
    "mapping": to_mapping,
    "list": to_list,
    "literal": to_literal,
}


def parse_value(flag: Flag, value: Any) -> Any:
    """``value`` parsed by ``flag``'s kind; ``None`` (or the text "None") where the flag is optional."""
    if flag.optional and (value is None or value == "None"):
        return None
    return VALUE_KINDS[flag.kind](flag.name, value)


# ------------------------------------------------------------------------------------------
# Declarations


@dataclass(frozen=True)
class Flag:
    """One flag (or positional word) of a command: its name, the kind of its value, default and help."""

    name: str
    kind: str = "literal"
    default: Any = None
    help: str = ""
    optional: bool = False  # None is a valid value
    positional: bool = False  # may also be given as a bare word, in order
    required: bool = False


@dataclass(frozen=True)
class Command:
    """A function and the flags it takes; ``extra``: flags it receives through ``**kwargs``."""

    function: Callable[..., Any]
    flags: tuple[Flag, ...]
    summary: str = ""
    extra: bool = False
    by_name: dict[str, Flag] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {flag.name: flag for flag in self.flags})


def _annotation_kind(annotation: Any) -> tuple[str, bool]:
    """(value kind, optional) from a parameter's annotation (a string under ``from __future__ import annotations``)."""
    if annotation is inspect.Parameter.empty:
        return "literal", False
    text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    parts = {part.strip() for part in re.split(r"\|(?![^\[]*\])", text)}
    optional = "None" in parts or "Optional" in text
    parts -= {"None"}
    if any(part.startswith(("dict", "Mapping")) for part in parts):
        return "mapping", optional
    if parts == {"bool"}:
        return "bool", optional
    if parts == {"int"}:
        return "int", optional
    if parts <= {"int", "float"}:
        return "float", optional
    if any(part.startswith(("tuple", "list", "Sequence")) for part in parts):
        return "list", optional
    if parts <= {"str", "os.PathLike", "Path", "pathlib.Path"}:
        return "str", optional
    return "literal", optional


def docstring_help(function: Callable[..., Any]) -> dict[str, str]:
    """``{name: text}`` from the ``Args:`` section of a Google-style docstring (``a, b: text`` names two)."""
    doc = inspect.getdoc(function) or ""
    found: dict[str, str] = {}
    in_args, names = False, []
    for line in doc.splitlines():
        if line.strip() in ("Args:", "Arguments:"):
            in_args = True
            continue
        if in_args and line and not line.startswith(" "):
            break  # the next section
        entry = re.match(r"^ {4}\**([\w, *]+?)(?: \(.*?\))?: (.*)$", line)
        if in_args and entry:
            names = [n.strip().lstrip("*") for n in entry.group(1).split(",")]
            for name in names:
                found[name] = entry.group(2).strip()
        elif in_args and line.strip() and names:
            for name in names:
                found[name] += " " + line.strip()
    return found


def signature_flags(function: Callable[..., Any]) -> tuple[tuple[Flag, ...], bool]:
    """The flags ``function``'s signature declares, and whether it takes ``**kwargs``."""
    helps = docstring_help(function)
    flags, extra = [], False
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            extra = True
            continue
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        kind, optional = _annotation_kind(parameter.annotation)
        has_default = parameter.default is not inspect.Parameter.empty
        default = parameter.default if has_default else None
        flags.append(
            Flag(
                parameter.name,
                kind,
                default,
                helps.get(parameter.name, ""),
                optional=optional or (has_default and default is None),
                positional=not has_default and parameter.kind is not inspect.Parameter.KEYWORD_ONLY,
                required=not has_default,
            )
        )
    return tuple(flags), extra


def command(
    function: Callable[..., Any],
    *,
    flags: Sequence[Flag] | None = None,
    extra_flags: Sequence[Flag] = (),
    summary: str | None = None,
) -> Command:
    """A :class:`Command`: ``flags`` default to the signature's; ``extra_flags`` go to its ``**kwargs``.

    With ``extra_flags`` (e.g. bench.loaders passing its flags on to ``run``) the command takes
    exactly the flags declared; a function taking ``**kwargs`` without them accepts any flag,
    parsed as a literal, and checks the names itself.
    """
    own, takes_kwargs = signature_flags(function) if flags is None else (tuple(flags), False)
    names = {flag.name for flag in own}
    extra = tuple(flag for flag in extra_flags if flag.name not in names)
    if summary is None:
        summary = (inspect.getdoc(function) or "").split("\n\n")[0].replace("\n", " ")
    return Command(function, own + extra, summary, extra=takes_kwargs and not extra_flags)


def _as_command(component: Any) -> Command:
    return component if isinstance(component, Command) else command(component)


# ------------------------------------------------------------------------------------------
# The command line itself


def _is_flag(token: str) -> bool:
    """fire's notion of a flag: a leading hyphen, unless the token is a negative number."""
    return token.startswith("-") and re.fullmatch(r"-\d+(\.\d*)?([eE][-+]?\d+)?", token) is None


def _flag_name(token: str, cmd: Command, has_value: bool, where: str) -> tuple[str, str | None]:
    """The declared flag a token names and the value a bare flag implies ("True", or "False" for --noname)."""
    key = token.lstrip("-").split("=", 1)[0].replace("-", "_")
    if len(key) == 1 and not token.startswith("--"):  # fire's short form: the one flag starting with that letter
        matches = [name for name in cmd.by_name if name[0] == key]
        key = matches[0] if len(matches) == 1 else token
    if key in cmd.by_name or (cmd.extra and key.isidentifier()):
        return key, None if has_value else "True"
    if key.startswith("no") and key[2:] in cmd.by_name and not has_value:
        return key[2:], "False"
    valid = ", ".join(f"--{name}" for name in cmd.by_name) or "(none)"
    raise UserError(f"unknown flag {token.split('=', 1)[0]}{where}; valid flags: {valid}.")


def scan_command_line(argv: Sequence[str], cmd: Command, subcommand: str = "") -> tuple[list[str], dict[str, str]]:
    """The positional words and the ``{flag: text}`` on ``argv``; UserError on any mistake.

    The grammar is fire's: ``--name value`` and ``--name=value`` give a value; ``--name`` alone (last,
    or before another flag) means true and ``--noname`` false; ``-x`` is the one flag starting with
    ``x``; hyphens in names read as underscores; the last of a repeated flag wins. Refused: unknown
    flags, more bare words than the command's positional parameters, and anything after ``--``
    (fire's own options).
    """
    where = f" for {subcommand}" if subcommand else ""
    positional = [flag for flag in cmd.flags if flag.positional]
    words: list[str] = []
    named: dict[str, str] = {}
    index = 0
    while index < len(argv):
        token = argv[index]
        if token == "--":
            raise UserError("nothing may follow --; pass every value as --flag value.")
        if not _is_flag(token):
            if len(words) >= len(positional):
                raise UserError(f"unexpected argument {token!r}{where}: every value needs its flag, e.g. --name value.")
            words.append(token)
            index += 1
            continue
        has_value = "=" in token
        bare = not has_value and (index + 1 == len(argv) or _is_flag(argv[index + 1]))
        name, implied = _flag_name(token, cmd, has_value or not bare, where)
        named.pop(name, None)  # the last one wins, and keeps its place
        named[name] = token.split("=", 1)[1] if has_value else implied if bare else argv[index + 1]
        index += 1 if has_value or bare else 2
    taken = {flag.name for flag in positional[: len(words)]} & set(named)
    if taken:
        raise UserError(f"--{taken.pop()} was given twice (as a word and as a flag).")
    given = {flag.name for flag in positional[: len(words)]} | set(named)
    missing = [flag for flag in cmd.flags if flag.required and flag.name not in given]
    if missing:
        flag = missing[0]
        what = f" ({flag.help.rstrip('.')})" if flag.help else ""
        how = "as a word or as " if flag.positional else ""
        raise UserError(f"missing {flag.name.upper()}{what}: pass it {how}--{flag.name} VALUE.")
    return words, named


def parse_command_line(argv: Sequence[str], cmd: Command, subcommand: str = "") -> tuple[list[Any], dict[str, Any]]:
    """:func:`scan_command_line`'s words and flags, each value parsed by its flag's kind."""
    words, named = scan_command_line(argv, cmd, subcommand)
    positional = [flag for flag in cmd.flags if flag.positional]
    values = {name: parse_value(cmd.by_name.get(name) or Flag(name), text) for name, text in named.items()}
    return [parse_value(flag, word) for flag, word in zip(positional, words)], values


# ------------------------------------------------------------------------------------------
# Help


def _usage(prog: str, cmd: Command, subcommand: str = "") -> str:
    words = " ".join(flag.name.upper() for flag in cmd.flags if flag.positional)
    return f"usage: python -m {' '.join(filter(None, (prog, subcommand, words)))} [--flag value ...]"


# How --help shows a value of each kind (a true/false flag takes none: --name, --noname).
_METAVARS = {
    "bool": "",
    "int": " INT",
    "float": " NUMBER",
    "str": " TEXT",
    "mapping": " DICT",
    "list": " A,B",
    "literal": " VALUE",
}


def help_text(prog: str, cmd: Command, subcommand: str = "") -> str:
    """``--help`` of one command: usage, summary, then every flag with its kind, default and description."""
    lines = [_usage(prog, cmd, subcommand), ""]
    if cmd.summary:
        lines += [cmd.summary, ""]
    lines.append("flags:")
    for flag in cmd.flags:
        label = f"{flag.name.upper()} (or --{flag.name})" if flag.positional else f"--{flag.name}"
        default = "" if flag.required else f" (default: {flag.default!r})"
        lines.append(f"  {label}{_METAVARS[flag.kind]}{default}")
        if flag.help:
            lines.append(f"      {flag.help}")
    if cmd.extra:
        lines.append("  other --flags are passed on (see the description)")
    return "\n".join(lines) + "\n"


def commands_text(prog: str, commands: Mapping[str, Command]) -> str:
    """``--help`` of a command with subcommands: each one with its summary."""
    width = max(len(name) for name in commands)
    lines = [f"usage: python -m {prog} COMMAND [--flag value ...]   (COMMAND --help lists its flags)", "", "commands:"]
    lines += [f"  {name:<{width}}  {cmd.summary}" for name, cmd in commands.items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------
# Dispatch


def _fire_component(cmd: Command) -> Callable[..., Any]:
    """``cmd.function`` for fire: a signature of its flags, each value parsed by the flag's kind.

    Every declared default is a sentinel so that the function sees only the flags given (its own
    defaults, or presets such as train's --fast, decide the rest).
    """
    import fire

    @functools.wraps(cmd.function, updated=())
    def call(*args: Any, **kwargs: Any) -> Any:
        return cmd.function(*args, **kwargs)

    parameters = [
        inspect.Parameter(
            flag.name,
            inspect.Parameter.POSITIONAL_OR_KEYWORD if flag.positional else inspect.Parameter.KEYWORD_ONLY,
            **({} if flag.required else {"default": None}),
        )
        for flag in sorted(cmd.flags, key=lambda flag: not flag.positional)
    ]
    if cmd.extra:
        parameters.append(inspect.Parameter("flags", inspect.Parameter.VAR_KEYWORD))
    call.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    parsers = {flag.name: functools.partial(parse_value, flag) for flag in cmd.flags}
    call = fire.decorators.SetParseFns(**parsers)(call)
    return fire.decorators.SetParseFn(functools.partial(to_literal, "flag"))(call)


def _dispatch(component: Any, args: list[str], prog: str) -> None:
    """Check ``args``, answer ``--help``, then run the command with fire (or without, where fire is absent)."""
    commands = {name: _as_command(c) for name, c in component.items()} if isinstance(component, Mapping) else None
    subcommand, cmd, rest = "", None, args
    if commands is not None:
        if not args or args[0] in ("-h", "--help"):
            if not args:
                raise UserError(f"choose a command: {', '.join(commands)} (--help describes them).")
            print(commands_text(prog, commands), end="")
            return
        if args[0] not in commands:
            raise UserError(f"unknown command {args[0]!r}; choose one of: {', '.join(commands)}.")
        subcommand, cmd, rest = args[0], commands[args[0]], args[1:]
    else:
        cmd = _as_command(component)
    before_dashes = rest[: rest.index("--")] if "--" in rest else rest  # after "--" it is refused below
    if "--help" in before_dashes or "-h" in before_dashes:
        print(help_text(prog, cmd, subcommand), end="")
        return
    words, named = parse_command_line(rest, cmd, subcommand)  # every value checked before anything runs
    try:
        import fire
    except ImportError:  # the GPU machine has no fire: call the function with the parsed values
        cmd.function(*words, **named)
        return
    # fire gets the command line as the layer read it (fire's own reading differs in corners: with
    # **kwargs it takes -c as a flag named c), and parses each value with the same parser.
    raw_words, raw_named = scan_command_line(rest, cmd, subcommand)
    canonical = [*([subcommand] if subcommand else []), *raw_words, *(f"--{k}={v}" for k, v in raw_named.items())]
    target: Any = _fire_component(cmd)
    if commands is not None:
        target = {subcommand: target}
    # Every command prints its own output; what a function returns (a summary dict, a folder) is for
    # Python callers, so fire is told to print nothing of it.
    fire.Fire(target, command=canonical, name=prog, serialize=lambda _result: None)


class _ClosedPipeSafe:
    """stdout that survives the reader going away (``| head -1``): output then goes to /dev/null.

    Python ignores SIGPIPE, so a write to a closed pipe raises BrokenPipeError wherever a print
    happens, e.g. in the middle of a training run; here it is caught once and the file descriptor
    pointed at /dev/null, so the command carries on and exits as it would have.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def _to_devnull(self) -> None:
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_devnull()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_devnull()
            with contextlib.suppress(BrokenPipeError):
                self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, buffer, ...: the stream's own
        return getattr(self._stream, name)


@contextlib.contextmanager
def _closed_pipe_safe_stdout() -> Iterator[None]:
    previous = sys.stdout
    safe = _ClosedPipeSafe(previous)
    sys.stdout = safe
    try:
        yield
    finally:
        safe.flush()  # what is still buffered, before the interpreter's own flush at exit
        sys.stdout = previous


def run_cli(component: Any, prog: str, *, argv: Sequence[str] | None = None) -> None:
    """Run a command line: ``component`` is a function, a :class:`Command` or a dict of subcommands.

    ``prog`` is the module as typed after ``python -m``. Exit codes: 0 success, 2 user error
    (3 for a NaN loss: the UserError's ``exit_code``), 130 interrupted before any handler saved state.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    with _closed_pipe_safe_stdout():
        try:
            _dispatch(component, args, prog)
        except UserError as err:
            if is_rank_zero():  # under torchrun every rank checks the same flags: rank 0 prints
                print(f"{prog}: error: {err}", file=sys.stderr)
            raise SystemExit(err.exit_code) from None
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            raise SystemExit(130) from None
