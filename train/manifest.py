"""Evaluate the tensor manifests of shared_schema/manifests/ against a config.

A manifest entry is {"name", "shape", optional "for": {"var", "from", "to"}}. Shapes are
expressions over the config, in a grammar small enough to implement the same way in
every language:

    expr   := term (("+" | "-") term)*
    term   := unary ("*" unary)*
    unary  := "-" unary | atom
    atom   := INT | NAME | NAME "[" expr "]" | "len(" NAME ")" | "(" expr ")"

NAME is a config key or the loop variable; a negative index counts from the end; the
length of a string is its number of characters.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "shared_schema"
TOKEN = re.compile(r"\s*(\d+|[A-Za-z_][A-Za-z_0-9]*|[-+*()\[\]])")


def tokenize(text: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(text.rstrip()):
        match = TOKEN.match(text, pos)
        if not match:
            raise ValueError(f"bad character in manifest expression {text!r} at {pos}")
        tokens.append(match.group(1))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str, env: dict) -> None:
        self.tokens, self.env, self.text = tokenize(text), env, text

    def peek(self) -> str | None:
        return self.tokens[0] if self.tokens else None

    def take(self, expected: str | None = None) -> str:
        if not self.tokens or (expected is not None and self.tokens[0] != expected):
            raise ValueError(f"manifest expression {self.text!r}: expected {expected or 'more'}")
        return self.tokens.pop(0)

    def expr(self) -> int:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self) -> int:
        value = self.unary()
        while self.peek() == "*":
            self.take()
            value *= self.unary()
        return value

    def unary(self) -> int:
        if self.peek() == "-":
            self.take()
            return -self.unary()
        return self.atom()

    def atom(self) -> int:
        token = self.take()
        if token.isdigit():
            return int(token)
        if token == "(":
            value = self.expr()
            self.take(")")
            return value
        if token == "len":
            self.take("(")
            value = len(self.env[self.take()])
            self.take(")")
            return value
        value = self.env[token]
        if self.peek() == "[":
            self.take()
            index = self.expr()
            self.take("]")
            return value[index]
        return value

    def parse(self) -> int:
        value = self.expr()
        if self.tokens:
            raise ValueError(f"manifest expression {self.text!r}: trailing {self.tokens}")
        return int(value)


def evaluate(text: str, env: dict) -> int:
    return _Parser(text, env).parse()


def load_manifest(arch: str) -> dict:
    return json.loads((SCHEMA_DIR / "manifests" / f"{arch}.json").read_text())


def expected_shapes(arch: str, config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor name the manifest requires for this config, with its shape."""
    shapes = {}
    for entry in load_manifest(arch)["tensors"]:
        loop = entry.get("for")
        if loop is None:
            shapes[entry["name"]] = tuple(evaluate(d, config) for d in entry["shape"])
            continue
        start, stop = (evaluate(str(loop[k]), config) for k in ("from", "to"))
        for i in range(start, stop):
            env = {**config, loop["var"]: i}
            name = entry["name"].replace("{" + loop["var"] + "}", str(i))
            shapes[name] = tuple(evaluate(d, env) for d in entry["shape"])
    return shapes
