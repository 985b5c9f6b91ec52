"""Command-line flags declared once, as the metadata of a dataclass's fields (as transformers' HfArgumentParser).

A field made with `setting(...)` carries its flag: help, group, bound, choices, aliases and switches. From that
one declaration `add_flags` builds the parser's flags, `check_settings` refuses a value out of bounds (the parser's
types call the same check), `settings_from` builds the dataclass back from the parsed flags, and `command_line`
writes values back out as the flags that set them.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import types
import typing
from collections import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
MAX_SEED = 2**64 - 1  # torch's generators take seeds up to this; numpy's none below 0
FLAG = "flag"  # the key of a field's metadata that holds its Flag
DEVICE_HELP = "auto, cpu, cuda or cuda:N"  # the help of every command's --device (see add_device_flag)


def comma_list(text: str, item: Callable[[str], T] = str) -> list[T]:
    """'a, b,c' -> [item('a'), item('b'), item('c')]: the one comma-list splitter; each caller words its own errors
    (item's ValueError passes through) and keeps its own domain checks."""
    return [item(part.strip()) for part in text.split(",")]


# ---------------------------------------------------------------- bounds: declared once, checked by one function


@dataclass(frozen=True)
class Bound:
    """The range a number must lie in, worded as the parser and validate() have always worded it."""

    holds: Callable[[Any], bool]
    parsed: str  # the parser's words: "argument --seeds: must be positive, got '0'"
    stated: str  # validate()'s words, for library callers: "--batch_size must be a positive number, got 0"
    not_a_number: str = "a number"


POSITIVE = Bound(lambda v: v > 0 and math.isfinite(v), "positive", "a positive number")
NON_NEGATIVE = Bound(lambda v: v >= 0 and math.isfinite(v), "a finite number >= 0", ">= 0")
UNIT_INTERVAL = Bound(lambda v: 0 <= v <= 1, "in [0, 1]", "in [0, 1]")
SEED = Bound(lambda v: 0 <= v <= MAX_SEED, "an integer in [0, 2**64 - 1]", "an integer in [0, 2**64 - 1]", "an integer")


def bounded(kind: type, bound: Bound, also: tuple[str, ...] = ()) -> Callable[[str], Any]:
    """A parser type: `kind` read from the text, refused at parse time when out of `bound`; the words in `also`
    are taken as they are (--batch_size auto)."""
    alternatives = "".join(f" or {word}" for word in also)

    def parse(text: str) -> Any:
        if text in also:
            return text
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {bound.not_a_number}{alternatives}, got {text!r}") from None
        if not bound.holds(value):
            raise argparse.ArgumentTypeError(f"must be {bound.parsed}{alternatives}, got {text!r}")
        return value

    parse.__name__ = f"bounded {kind.__name__}"
    return parse


def positive(kind: type) -> Callable[[str], Any]:
    return bounded(kind, POSITIVE)


non_negative_float = bounded(float, NON_NEGATIVE)
# A random seed is refused at parse time: found later, the run would already have claimed its folder.
random_seed = bounded(int, SEED)


def integer_list(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; what the values must satisfy is the model config's to say."""
    try:
        return comma_list(text, int)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers such as 1,2,4, got {text!r}") from None


def float_list(text: str) -> list[float]:
    """'1e-3,3e-3' -> [0.001, 0.003]."""
    try:
        values = comma_list(text, float)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers such as 1e-3,3e-3, got {text!r}") from None
    if not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return values


# ---------------------------------------------------------------- a setting's declaration


@dataclass(frozen=True)
class Flag:
    group: str | None = None  # the --help section; None: the command's own options
    help: str | None = None
    bound: Bound | None = None
    # What the parser's type checks, where that is not `bound` (True): a looser bound, or None for the type
    # alone. These flags were checked by validate() alone before their bounds were declared here, and their
    # users' one-line errors stay its words ("--warmup_steps must be >= 0, got -1").
    parse_bound: Bound | None | bool = True
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()  # more names of the flag (--lr)
    bare: str | None = None  # the value of the flag given alone (nargs="?")
    on: str | None = None  # a switch of a `bool | None` field: help of --NAME, which sets True ...
    off: str | None = None  # ... and of --no_NAME, which sets False; None (not given) keeps the default
    resumable: bool = False  # a resumed run may change it; the others define the run
    # The flag's text, read by `settings_from` after parsing as read(text, "--NAME"), not by the parser: for the
    # flags whose errors were always the library's words ("--lengths: 16 given more than once", exit code 2),
    # which argparse's "argument --lengths: ..." would change.
    read: Callable[[str, str], Any] | None = None
    also: tuple[str, ...] = ()  # words a number's flag takes besides numbers: --batch_size auto


def setting(default: Any = dataclasses.MISSING, help: str | None = None, **flag: Any) -> Any:
    """A dataclass field with its flag: `name: int = setting(1, "what it is", group=..., bound=POSITIVE)`; a field
    without a default is a required flag."""
    return dataclasses.field(default=default, metadata={FLAG: Flag(help=help, **flag)})


def flags_of(cls: type) -> dict[str, Flag]:
    """The fields of `cls` that have a flag, in declaration order."""
    return {f.name: f.metadata[FLAG] for f in dataclasses.fields(cls) if FLAG in f.metadata}


def _without_none(hint: Any) -> Any:
    """`int | None` -> int: None is the flag not given, not a kind of value."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(part for part in typing.get_args(hint) if part is not type(None))
    return hint


@functools.cache
def _value_types(cls: type) -> dict[str, Any]:
    return {name: _without_none(hint) for name, hint in typing.get_type_hints(cls).items()}


def _words(choices: Sequence[str]) -> str:
    return f"{', '.join(choices[:-1])} or {choices[-1]}" if len(choices) > 1 else choices[0]


def check_settings(values: Any) -> None:
    """Raise ValueError naming the first setting of a flagged dataclass out of its declared bound or choices."""
    for name, flag in flags_of(type(values)).items():
        value = getattr(values, name)
        if value is None:
            continue
        if value in flag.also:
            continue
        if flag.bound is not None and not _holds(flag.bound, value):
            alternatives = "".join(f" or {word}" for word in flag.also)
            raise ValueError(f"--{name} must be {flag.bound.stated}{alternatives}, got {value}")
        if flag.choices and value not in flag.choices:
            raise ValueError(f"--{name} must be {_words(flag.choices)}, got {value!r}")


def _holds(bound: Bound, value: Any) -> bool:
    """Whether `value` is in `bound`; a value that is no number is not (a library caller's --batch_size "foo")."""
    try:
        return bool(bound.holds(value))
    except TypeError:
        return False


# ---------------------------------------------------------------- the parser, and the flags back out


# A list's parser type, by the type of its items: '1,2,4' -> [1, 2, 4].
COMMA_LISTS: dict[type, Callable[[str], list[Any]]] = {int: integer_list, float: float_list, str: comma_list}


def _parser_type(kind: Any, flag: Flag) -> Callable[[str], Any] | None:
    if flag.read is not None:
        return None  # the text, for `settings_from` to read
    if typing.get_origin(kind) in (list, tuple, abc.Sequence):
        return COMMA_LISTS[typing.get_args(kind)[0]]
    if kind in (int, float):
        bound = flag.bound if flag.parse_bound is True else flag.parse_bound
        return bounded(kind, bound, flag.also) if bound is not None else kind
    return None  # a string


def _arguments(name: str, kind: Any, default: Any, flag: Flag) -> list[tuple[list[str], dict[str, Any]]]:
    """The add_argument calls of one field: (option strings, keywords)."""
    if flag.on is not None or flag.off is not None:
        switches = [(f"--{name}", True, flag.on), (f"--no_{name}", False, flag.off)]
        return [([option], dict(dest=name, action="store_const", const=const, help=words))
                for option, const, words in switches if words is not None]  # fmt: skip
    options = [f"--{name}", *flag.aliases]
    if kind is bool:
        return [(options, dict(action="store_true", help=flag.help))]
    keywords: dict[str, Any] = dict(help=flag.help)
    if default is dataclasses.MISSING:
        keywords["required"] = True
    else:
        keywords["default"] = default
    if flag.bare is not None:
        keywords.update(nargs="?", const=flag.bare)
    if flag.choices:
        keywords["choices"] = list(flag.choices)
    if (parse := _parser_type(kind, flag)) is not None:
        keywords["type"] = parse
    return [(options, keywords)]


def add_flags(parser: argparse.ArgumentParser, cls: type, leave_out: Sequence[str] = ()) -> None:
    """A flag for each flagged field of `cls`, in its group; the groups in `leave_out` are not offered."""
    groups: dict[str, Any] = {}
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for name, flag in flags_of(cls).items():
        if flag.group in leave_out:
            continue
        if flag.group not in groups:
            groups[flag.group] = parser if flag.group is None else parser.add_argument_group(flag.group)
        for options, keywords in _arguments(name, _value_types(cls)[name], defaults[name], flag):
            groups[flag.group].add_argument(*options, **keywords)


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    """--device, for the commands whose settings hold no device (a field of its own declares it with DEVICE_HELP)."""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def settings_from(cls: type[T], parsed: argparse.Namespace, **given: Any) -> T:
    """`cls` made from the flags `add_flags` gave the parser (a `read` flag's text read now), `given` over them;
    the fields it offered no flag keep their defaults."""
    values = dict(given)
    for name, flag in flags_of(cls).items():
        if name in values or not hasattr(parsed, name):
            continue
        value = getattr(parsed, name)
        values[name] = flag.read(value, f"--{name}") if flag.read is not None and isinstance(value, str) else value
    return cls(**values)


def _flag_text(name: str, value: Any, flag: Flag) -> str:
    """'' for a value that is no flag's (None: not given; False: a store_true flag left off)."""
    if value is None:
        return ""
    if flag.on is not None or flag.off is not None:
        if (flag.on if value else flag.off) is None:
            raise ValueError(f"no flag sets {name} to {value!r}")  # --selective: only --no_selective exists
        return f"--{name}" if value else f"--no_{name}"
    if isinstance(value, bool):
        return f"--{name}" if value else ""
    if flag.bare is not None and value == flag.bare:
        return f"--{name}"  # --resume alone, not "--resume " with an empty path
    return f"--{name} {_flag_value(value)}"


def _flag_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, float):
        short = f"{value:g}"  # the hints' words (6e-05); every digit where :g would round the value
        return short if float(short) == value else repr(value)
    return str(value)


def command_line(cls: type, **values: Any) -> str:
    """The flags that set `values` of `cls`'s fields: command_line(TrainArguments, learning_rate=6e-05)
    -> '--learning_rate 6e-05'."""
    flags = flags_of(cls)
    return " ".join(text for name, value in values.items() if (text := _flag_text(name, value, flags[name])))
