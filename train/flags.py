"""Dataclass fields as command-line flags, so each setting is declared once.

A field declared with `knob(default, help)` becomes `--field-name`: a bool becomes a
switch (`--x` / `--no-x`), a tuple a comma-separated list of its elements' type, anything
else a value of the default's type. A flag left out is absent from the parsed arguments,
so the dataclass (or a preset) keeps the say on its default.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, field, fields

from train.errors import TrainError


def knob(default, help: str, **extra):
    """A dataclass field that is also a flag; `extra` goes to argparse (e.g. choices)."""
    return field(default=default, metadata={"help": help, **extra})


def flag_name(name: str) -> str:
    """The CLI flag of a config field: `warmup_steps` -> `--warmup-steps`."""
    return "--" + name.replace("_", "-")


def comma_list(kind: type):
    """A parser of "a,b,c" into a tuple of `kind`, with a readable error."""

    def parse(text: str) -> tuple:
        try:
            return tuple(kind(part) for part in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"takes comma-separated {kind.__name__} values like 400,200, got {text!r}"
            ) from None

    parse.__name__ = f"list of {kind.__name__}"
    return parse


def add_flags(group, cls: type, seen: set[str]) -> None:
    """One flag per knob of `cls` whose name is not in `seen` (a name two dataclasses
    share is one flag); adds the names to `seen`."""
    for f in fields(cls):
        if "help" not in f.metadata or f.name in seen:
            continue
        seen.add(f.name)
        default = f.default if f.default is not MISSING else f.default_factory()
        extra = {k: v for k, v in f.metadata.items() if k != "help"}
        kwargs = dict(default=argparse.SUPPRESS, help=f.metadata["help"], **extra)
        if isinstance(default, bool):
            group.add_argument(flag_name(f.name), action=argparse.BooleanOptionalAction, **kwargs)
        elif isinstance(default, tuple):
            group.add_argument(flag_name(f.name), type=comma_list(type(default[0])), **kwargs)
        else:
            group.add_argument(flag_name(f.name), type=type(default), **kwargs)


def given(args: argparse.Namespace, cls: type) -> dict:
    """The knobs of `cls` set on the command line."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}


def build(cls: type, values: dict, what: str):
    """`cls(**values)`; its own checks (asserts in __post_init__) become a TrainError."""
    try:
        return cls(**values)
    except (AssertionError, ValueError) as err:
        raise TrainError(f"bad {what} settings: {err}") from err
