"""Replies as dicts: a JSON body as it is; a binary one (a request's `"encoding": "f32"`)
as the same dict a JSON tensor reply gives, with float32 arrays in place of base64."""

from __future__ import annotations

import base64
import json

import numpy as np

BINARY = "application/octet-stream"


class ServeError(Exception):
    """An error reply, no reply in time, or a broken reply; the message says which."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def parse_body(content_type: str | None, body: bytes, shape, fields, dtype: str | None) -> dict:
    """The reply dict of a body. For a binary body, `shape` is [rows, cols] and `fields`
    the names of the tensors it holds back to back (the x-shape and x-fields headers)."""
    if content_type != BINARY:
        return json.loads(body)
    rows, cols = (int(v) for v in shape)
    values = np.frombuffer(body, dtype="<f4")
    if dtype != "f32" or values.size != len(fields) * rows * cols:
        raise ServeError("bad_reply", f"{len(body)} bytes do not hold {fields} of shape {rows}x{cols} f32")
    tensors = dict(zip(fields, values.reshape(len(fields), rows, cols), strict=True))
    return {"v": 1, "ok": True, "shape": [rows, cols], "dtype": "f32", **tensors}


def request_body(request: dict | bytes) -> bytes:
    """A request as it goes on the wire: a dict as JSON, bytes as they are."""
    return request if isinstance(request, bytes) else json.dumps(request).encode()


def error_reply(code: str, message: str) -> dict:
    """An error reply made on the client's side, shaped as the service's."""
    return {"v": 1, "ok": False, "error": {"code": code, "message": message}}


def unroutable(queue: str) -> ServeError:
    return ServeError("unroutable", f"no queue {queue!r} took the request; is the service up?")


def refused(queue: str) -> ServeError:
    return ServeError("refused", f"the broker refused the request to {queue!r}")


def reply_from(content_type: str | None, body: bytes, headers: dict | None) -> dict:
    """The reply dict of a delivered reply; a body that cannot be read becomes a
    `bad_reply` error reply, so a waiter is answered rather than left hanging."""
    headers = headers or {}
    try:
        shape, fields = headers.get("x-shape"), headers.get("x-fields")
        return parse_body(content_type, body, shape, fields, headers.get("x-dtype"))
    except (ServeError, ValueError) as err:
        return error_reply("bad_reply", str(err))


def is_last(reply: dict) -> bool:
    """Whether a reply ends its request: a plain reply, or a stream's `done` frame."""
    return "seq" not in reply or bool(reply.get("done"))


class FrameOrder:
    """A stream's frames in sequence order, each once: frames may come out of order, and
    a stream restarted after a redelivery repeats the ones already seen."""

    def __init__(self) -> None:
        self.next = 0
        self.waiting: dict[int, dict] = {}

    def add(self, reply: dict) -> list[dict]:
        """Take in one reply; the frames now ready, in order. An error reply that is not
        a frame (the request was refused before its stream began) raises ServeError, and
        so does an error frame."""
        if "seq" not in reply:
            check(reply)
        if reply["seq"] >= self.next:
            self.waiting.setdefault(reply["seq"], reply)
        ready = []
        while self.next in self.waiting:
            frame = self.waiting.pop(self.next)
            self.next += 1
            check(frame)
            ready.append(frame)
        return ready


def tensor(reply: dict, key: str = "data") -> np.ndarray:
    """The float32 array of a tensor reply, JSON or binary; ServeError for an error reply."""
    check(reply)
    if isinstance(reply[key], np.ndarray):
        return reply[key]
    return np.frombuffer(base64.b64decode(reply[key]), dtype="<f4").reshape(reply["shape"])


def text(reply: dict) -> str:
    """The text of a generate_text reply; ServeError for an error reply."""
    check(reply)
    return reply["text"]


def check(reply: dict) -> None:
    if not reply.get("ok"):
        raise ServeError(reply["error"]["code"], reply["error"]["message"])
