"""Python client of the serve_ex model service. It needs numpy and pika only (and aio-pika
for `serve_client.aio.AsyncClient`, with `pip install serve-client[asyncio]`).

    from serve_client import Client, tensor
    with Client() as client:
        images = tensor(client.call({"v": 1, "model": "vae", "op": "generate", "n": 16}))

`Client` talks AMQP (publisher confirms, replies acked once recorded, reconnects with
backoff); `http_call` talks to the HTTP endpoint, and `http_stream` reads a streamed
generation from it, resuming on another node if one dies mid-stream. Replies, JSON or
binary, decode into the same dict, and `tensor` / `text` take the values out of it.
"""

from serve_client.amqp import DEFAULT_QUEUE, DEFAULT_URL, Client
from serve_client.http import http_call, http_stream
from serve_client.png import save_grid
from serve_client.replies import ServeError, parse_body, tensor, text

__all__ = [
    "DEFAULT_QUEUE",
    "DEFAULT_URL",
    "Client",
    "ServeError",
    "http_call",
    "http_stream",
    "parse_body",
    "save_grid",
    "tensor",
    "text",
]
