"""Command-line flags declared once, on the fields of a dataclass, as transformers' HfArgumentParser does.

A field's metadata (made by `setting`) holds its help, bound, choices and flag spelling. From it come the
parser's flags (`add_flags`), the check a library caller gets (`check_fields`, from a dataclass's validate)
and the flags that write a value back out (`flag_text`, for the hints a run prints). The flag types other
commands use (`positive`, `random_seed`, the comma lists) live here too, so each bound is stated once.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
MAX_SEED = 2**64 - 1  # torch's generators take seeds up to this; numpy's none below 0


# ---------------------------------------------------------------- bounds


@dataclass(frozen=True)
class Bound:
    """What a number must satisfy, and the two ways a user is told: at parse time and by validate()."""

    holds: Callable[[float], bool]
    parsed: str  # the parser's message: "must be positive"
    stated: str  # validate()'s: "--x must be a positive number"
    unparsable: str = "must be a number"


POSITIVE = Bound(lambda v: v > 0 and math.isfinite(v), "must be positive", "must be a positive number")
NON_NEGATIVE = Bound(lambda v: v >= 0 and math.isfinite(v), "must be a finite number >= 0", "must be >= 0")
FRACTION = Bound(lambda v: 0 <= v <= 1, "must be in [0, 1]", "must be in [0, 1]")
SEED = Bound(lambda v: 0 <= v <= MAX_SEED, "must be an integer in [0, 2**64 - 1]",
             "must be an integer in [0, 2**64 - 1]", "must be an integer")  # fmt: skip


def bounded(kind: Callable[[str], T], bound: Bound) -> Callable[[str], T]:
    """An argparse type: `kind` of the text, refused (in one line) outside `bound`."""

    def parse(text: str) -> T:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{bound.unparsable}, got {text!r}") from None
        if not bound.holds(value):
            raise argparse.ArgumentTypeError(f"{bound.parsed}, got {text!r}")
        return value

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


def positive(kind: Callable[[str], T]) -> Callable[[str], T]:
    return bounded(kind, POSITIVE)


non_negative_float = bounded(float, NON_NEGATIVE)
# Refused at parse time when out of range: found later, the run would already have claimed its folder.
random_seed = bounded(int, SEED)


# ---------------------------------------------------------------- comma lists


def split_list(text: str, kind: Callable[[str], T] = str) -> list[T]:
    """'a, b' -> [kind('a'), kind('b')]: the one comma-list reader; ValueError (from `kind`) on a bad part.

    Callers keep their own rules (positive, distinct, known names) and messages."""
    return [kind(part.strip()) for part in text.split(",")]


def integer_list(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; what the values must satisfy is the model config's to say."""
    try:
        return split_list(text, int)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers such as 1,2,4, got {text!r}") from None


def float_list(text: str) -> list[float]:
    """'1e-3,3e-3' -> [0.001, 0.003]."""
    try:
        values = split_list(text, float)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers such as 1e-3,3e-3, got {text!r}") from None
    if not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return values


# ---------------------------------------------------------------- flags from fields


@dataclass(frozen=True)
class Flag:
    """How one dataclass field is a flag (the field's name is the flag's, --name, unless `switches` says)."""

    help: str | None = None
    bound: Bound | None = None  # checked by the parser and by check_fields
    # The parser's check, when it is not `bound` (True): None leaves the bound to validate() and its message,
    # as for the flags whose parse-time check was looser before the bounds were declared here.
    parse_bound: Bound | None | bool = True
    choices: Collection[str] | None = None  # read when the parser is built (a registry may grow)
    aliases: tuple[str, ...] = ()  # more names of the flag: --lr
    bare: str | None = None  # nargs="?": the value of the flag given alone
    switches: dict[str, tuple[Any, str | None]] | None = None  # store_const flags: name -> (value, help)


def setting(default: Any, help: str | None = None, **flag: Any) -> Any:
    """A dataclass field with its flag's declaration in the metadata."""
    return dataclasses.field(default=default, metadata={"flag": Flag(help, **flag)})


def flag_of(field: dataclasses.Field) -> Flag:
    return field.metadata.get("flag", Flag())


def value_kind(annotation: Any) -> Any:
    """int for `int | None`, list[int] for `list[int] | None`: the annotation without its None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    return annotation


def flag_type(kind: Any, flag: Flag) -> Callable[[str], Any] | None:
    """The argparse type: a comma list, or a number within the field's bound; None for text."""
    if typing.get_origin(kind) is list:
        return integer_list if typing.get_args(kind) == (int,) else float_list
    if kind is str:
        return None
    bound = flag.bound if flag.parse_bound is True else flag.parse_bound
    return kind if bound is None else bounded(kind, bound)


def add_field_flag(group: argparse._ActionsContainer, field: dataclasses.Field, kind: Any) -> None:
    flag, name = flag_of(field), field.name
    if flag.switches is not None:
        for option, (const, text) in flag.switches.items():
            group.add_argument(option, dest=name, action="store_const", const=const, default=field.default, help=text)
    elif kind is bool and field.default is None:
        group.add_argument(f"--{name}", action="store_const", const=True, help=flag.help)
    elif kind is bool:
        group.add_argument(f"--{name}", action="store_true", help=flag.help)
    else:
        shape = {} if flag.bare is None else {"nargs": "?", "const": flag.bare}
        choices = None if flag.choices is None else list(flag.choices)
        group.add_argument(f"--{name}", *flag.aliases, dest=name, type=flag_type(kind, flag), default=field.default,
                           choices=choices, help=flag.help, **shape)  # fmt: skip


def add_flags(
    parser: argparse.ArgumentParser, cls: type, groups: dict[str, str], leave_out: Iterable[str] = ()
) -> None:
    """A flag per field of `cls`, in field order; `groups`: the field that opens each argument group -> its title."""
    hints = typing.get_type_hints(cls)
    skipped = set(leave_out)
    group: argparse._ActionsContainer = parser
    for field in dataclasses.fields(cls):
        if field.name in groups:
            group = parser.add_argument_group(groups[field.name])
        if field.name not in skipped:
            add_field_flag(group, field, value_kind(hints[field.name]))


def typed_fields(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations of the flags the user typed (so a resumed run knows what was asked to change)."""
    typed = {token.split("=", 1)[0] for token in argv if token.startswith("--")}
    return {a.dest for a in parser._actions if typed.intersection(a.option_strings)}


# ---------------------------------------------------------------- checks and the way back


def check_fields(instance: Any) -> None:
    """ValueError naming the first field outside its declared bound or choices (None: not given, not checked)."""
    for field in dataclasses.fields(instance):
        flag, value = flag_of(field), getattr(instance, field.name)
        if value is None:
            continue
        if flag.bound is not None and not flag.bound.holds(value):
            raise ValueError(f"--{field.name} {flag.bound.stated}, got {value}")
        if flag.choices is not None and value not in flag.choices:
            *rest, last = flag.choices
            raise ValueError(f"--{field.name} must be {', '.join(rest)} or {last}, got {value!r}")


def flag_text(cls: type, **values: Any) -> str:
    """The flags that set these fields of `cls`, in the order given: (A, resume="x") -> "--resume x"."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return " ".join(one_flag(fields[name], value) for name, value in values.items())


def one_flag(field: dataclasses.Field, value: Any) -> str:
    flag = flag_of(field)
    for option, (const, _) in (flag.switches or {}).items():
        if value == const:
            return option
    if value is True:
        return f"--{field.name}"
    if flag.bare is not None and value == flag.bare:
        return f"--{field.name}"
    return f"--{field.name} {flag_value(value)}"


def flag_value(value: Any) -> str:
    """A value as its flag takes it: 1,2,4 for a list, 6e-05 for a float."""
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)
