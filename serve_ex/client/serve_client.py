"""Python client of the serve_ex service: send a request to RabbitMQ, await the reply by
correlation id, decode it.

    python -m serve_client generate --model vae -n 16 --seed 42 --out runs/served.png
    python -m serve_client text --model gpt --prompt "ROMEO:" --max-new-tokens 200
    python -m serve_client raw '{"v": 1, "model": "vae", "op": "generate", "n": 1}'
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pika

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_QUEUE = "serve_ex.requests"


class ServeError(Exception):
    """An error reply, or no reply in time; the message says which."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class Client:
    """One connection with an exclusive reply queue; requests may overlap."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        queue: str = DEFAULT_QUEUE,
        on_reply: Callable[[str, dict], None] | None = None,
    ) -> None:
        """`on_reply(correlation_id, reply)` is called for every reply, duplicates included."""
        self.queue = queue
        self.on_reply = on_reply
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.reply_queue = self.channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        self.replies: dict[str, list[dict]] = {}
        # the x-model-version header of each reply: which file version computed it
        self.versions: dict[str, list[str | None]] = {}
        self.channel.basic_consume(self.reply_queue, self._on_reply, auto_ack=True)

    def _on_reply(self, _ch, _method, props, body: bytes) -> None:
        reply = parse_reply(props, body)
        self.replies.setdefault(props.correlation_id, []).append(reply)
        self.versions.setdefault(props.correlation_id, []).append(
            (props.headers or {}).get("x-model-version")
        )
        if self.on_reply:
            self.on_reply(props.correlation_id, reply)

    def send(self, request: dict | bytes, correlation_id: str | None = None) -> str:
        """Publish a request (a dict, or raw bytes sent as they are); returns its id."""
        correlation_id = correlation_id or uuid.uuid4().hex
        body = request if isinstance(request, bytes) else json.dumps(request).encode()
        props = pika.BasicProperties(
            reply_to=self.reply_queue,
            correlation_id=correlation_id,
            content_type="application/json",
            delivery_mode=2,
        )
        self.channel.basic_publish("", self.queue, body, props)
        return correlation_id

    def poll(self, seconds: float = 0.0) -> None:
        self.connection.process_data_events(time_limit=seconds)

    def wait(self, correlation_id: str, timeout: float = 30.0) -> dict:
        """The first reply to `correlation_id` (later duplicates are ignored)."""
        deadline = time.monotonic() + timeout
        while correlation_id not in self.replies:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServeError("timeout", f"no reply to {correlation_id} within {timeout} s")
            self.poll(min(left, 0.05))
        return self.replies[correlation_id][0]

    def call(self, request: dict | bytes, timeout: float = 30.0) -> dict:
        return self.wait(self.send(request), timeout)

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


BINARY = "application/octet-stream"


def parse_reply(props, body: bytes) -> dict:
    """A reply as a dict. A JSON body as it is; a binary one (`"encoding": "f32"`) as the
    same dict a JSON tensor reply gives, with its tensors as float32 arrays instead of
    base64, read with the x-shape and x-fields headers."""
    if props.content_type != BINARY:
        return json.loads(body)
    headers = props.headers or {}
    return binary_reply(body, headers.get("x-dtype"), headers["x-shape"], headers["x-fields"])


def binary_reply(body: bytes, dtype: str | None, shape: list[int], fields: list[str]) -> dict:
    rows, cols = shape
    values = np.frombuffer(body, dtype="<f4")
    if dtype != "f32" or values.size != len(fields) * rows * cols:
        raise ServeError("bad_reply", f"{len(body)} bytes do not hold {fields} of shape {rows}x{cols} f32")
    tensors = dict(zip(fields, values.reshape(len(fields), rows, cols), strict=True))
    return {"v": 1, "ok": True, "shape": [rows, cols], "dtype": "f32", **tensors}


def http_call(base: str, model: str, op: str, body: dict | bytes, timeout: float = 30.0) -> tuple[int, dict]:
    """POST `body` (without model and op) to BASE/v1/models/MODEL/OP of the service's HTTP
    endpoint; (status, reply), the reply decoded like an AMQP one."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{base}/v1/models/{model}/{op}", data=data, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            status, headers, payload = r.status, r.headers, r.read()
    except urllib.error.HTTPError as err:
        status, headers, payload = err.code, err.headers, err.read()
    if headers.get("content-type") != BINARY:
        return status, json.loads(payload)
    shape = [int(v) for v in headers["x-shape"].split(",")]
    return status, binary_reply(payload, headers.get("x-dtype"), shape, headers["x-fields"].split(","))


def tensor(reply: dict, key: str = "data") -> np.ndarray:
    """The float32 array of a tensor reply, JSON or binary; raises ServeError for an error reply."""
    if not reply.get("ok"):
        raise ServeError(reply["error"]["code"], reply["error"]["message"])
    if isinstance(reply[key], np.ndarray):
        return reply[key]
    return np.frombuffer(base64.b64decode(reply[key]), dtype="<f4").reshape(reply["shape"])


def text(reply: dict) -> str:
    if not reply.get("ok"):
        raise ServeError(reply["error"]["code"], reply["error"]["message"])
    return reply["text"]


def save_grid(images: np.ndarray, path: Path) -> Path:
    """A PNG grid of (N, 784) images in [0, 1], drawn by the training stage's plotting."""
    from train.plots import image_grid

    path.parent.mkdir(parents=True, exist_ok=True)
    return image_grid(np.clip(images, 0, 1), path, f"{len(images)} served samples")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serve_client", description=__doc__.splitlines()[0])
    p.add_argument("--url", default=DEFAULT_URL)
    p.add_argument("--queue", default=DEFAULT_QUEUE)
    p.add_argument("--timeout", type=float, default=30.0)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="images from a VAE or WGAN model, saved as a PNG grid")
    g.add_argument("--model", default="vae")
    g.add_argument("-n", type=int, default=16)
    g.add_argument("--seed", type=int)
    g.add_argument("--out", type=Path, default=Path("runs/served.png"))
    g.add_argument("--encoding", choices=["base64", "f32"], default="f32", help="the reply's tensor encoding")
    t = sub.add_parser("text", help="text from a GPT model, printed")
    t.add_argument("--model", default="gpt")
    t.add_argument("--prompt", default="ROMEO:")
    t.add_argument("--max-new-tokens", type=int, default=200)
    t.add_argument("--temperature", type=float, default=0.0)
    t.add_argument("--top-k", type=int)
    t.add_argument("--seed", type=int)
    r = sub.add_parser("raw", help="send a JSON body as given and print the reply")
    r.add_argument("body")
    args = p.parse_args(argv)
    try:
        with Client(args.url, args.queue) as client:
            if args.command == "generate":
                request = {"v": 1, "model": args.model, "op": "generate", "n": args.n}
                request["encoding"] = args.encoding
                if args.seed is not None:
                    request["seed"] = args.seed
                images = tensor(client.call(request, args.timeout))
                if images.min() < 0:  # a GAN's tanh pixels
                    images = (images + 1) / 2
                print(f"{images.shape[0]} images from '{args.model}': {save_grid(images, args.out)}")
            elif args.command == "text":
                request = {
                    "v": 1,
                    "model": args.model,
                    "op": "generate_text",
                    "prompt": args.prompt,
                    "max_new_tokens": args.max_new_tokens,
                    "temperature": args.temperature,
                }
                for key in ("top_k", "seed"):
                    if getattr(args, key) is not None:
                        request[key] = getattr(args, key)
                print(text(client.call(request, args.timeout)))
            else:
                print(json.dumps(client.call(args.body.encode(), args.timeout)))
    except ServeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except pika.exceptions.AMQPConnectionError as err:
        print(f"error: cannot reach the broker at {args.url}: {err!r}; is RabbitMQ running?", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
