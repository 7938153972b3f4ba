"""The service over RabbitMQ: publish a request, await its reply by correlation id."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pika
import pika.exceptions as amqp_errors

from serve_client.replies import (
    FrameOrder,
    ServeError,
    is_last,
    refused,
    reply_from,
    request_body,
    unroutable,
)

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_QUEUE = "serve_ex.requests"
# What a dropped connection or channel raises; the client reconnects on these.
DROPPED = (
    amqp_errors.AMQPConnectionError,
    amqp_errors.ConnectionWrongStateError,
    amqp_errors.ChannelWrongStateError,
    amqp_errors.ChannelClosed,
)


def reply_queue_name(prefix: str, user_id: str | None) -> str:
    """A new reply queue name under `prefix`, and under the user's own part of it when
    the service ties replies to their sender (`prefix` + user + ".")."""
    owner = f"{user_id}." if user_id else ""
    return f"{prefix}{owner}{uuid.uuid4().hex}"


class Client:
    """One connection with an exclusive reply queue; requests may overlap.

    - Requests go out with publisher confirms and `mandatory`: one the broker refuses or
      cannot route raises ServeError at once instead of vanishing.
    - Replies are acked after they are recorded, never before.
    - A dropped connection is reopened with exponential backoff (`reconnect_tries`
      times, 0.1 s doubling to 2 s); a new reply queue is declared and every request
      still awaiting its reply is published again. The service may then answer one of
      them twice: `wait` returns the first, `replies` keeps every one.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        queue: str = DEFAULT_QUEUE,
        on_reply: Callable[[str, dict], None] | None = None,
        reconnect_tries: int = 6,
        name: str = "serve_client",
        user_id: str | None = None,
        reply_prefix: str = "serve_ex.reply.",
    ) -> None:
        """`on_reply(correlation_id, reply)` is called for every reply, duplicates included;
        `name` is the connection name the broker shows. `user_id`: the broker user of
        `url`, for a service that requires it (`AMQP_REQUIRE_USER_ID`); requests carry it,
        and the reply queue is one of that user's own (`reply_prefix` + user + "."),
        instead of a broker-named one."""
        self.url, self.queue, self.on_reply, self.name = url, queue, on_reply, name
        self.user_id, self.reply_prefix = user_id, reply_prefix
        self.reconnect_tries = reconnect_tries
        self.replies: dict[str, list[dict]] = {}
        # the x-model-version header of each reply: which file version computed it
        self.versions: dict[str, list[str | None]] = {}
        self.outstanding: dict[str, bytes] = {}  # published, no (last) reply yet
        self.reconnects = 0
        self._connect()

    def _connect(self) -> None:
        params = pika.URLParameters(self.url)
        params.client_properties = {"connection_name": self.name}
        self.connection = pika.BlockingConnection(params)
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        name = reply_queue_name(self.reply_prefix, self.user_id) if self.user_id else ""
        self.reply_queue = self.channel.queue_declare(name, exclusive=True, auto_delete=True).method.queue
        self.channel.basic_consume(self.reply_queue, self._on_reply)

    def _reconnect(self, error: Exception) -> None:
        delay = 0.1
        for _ in range(self.reconnect_tries):
            time.sleep(delay)
            try:
                self._connect()
            except DROPPED:
                delay = min(2 * delay, 2.0)
                continue
            self.reconnects += 1
            for cid, body in list(self.outstanding.items()):
                self._publish(body, cid)
            return
        message = f"lost the broker at {self.url} ({error!r}); {self.reconnect_tries} reconnects failed"
        raise ServeError("disconnected", message)

    def _on_reply(self, channel, method, props, body: bytes) -> None:
        reply = reply_from(props.content_type, body, props.headers)
        cid = props.correlation_id
        self.replies.setdefault(cid, []).append(reply)
        self.versions.setdefault(cid, []).append((props.headers or {}).get("x-model-version"))
        if is_last(reply):
            self.outstanding.pop(cid, None)
        channel.basic_ack(method.delivery_tag)
        if self.on_reply:
            self.on_reply(cid, reply)

    def _publish(self, body: bytes, correlation_id: str) -> None:
        props = pika.BasicProperties(
            reply_to=self.reply_queue,
            correlation_id=correlation_id,
            user_id=self.user_id,
            content_type="application/json",
            delivery_mode=2,
        )
        try:
            self.channel.basic_publish("", self.queue, body, props, mandatory=True)
        except amqp_errors.UnroutableError:
            self.outstanding.pop(correlation_id, None)
            raise unroutable(self.queue) from None
        except amqp_errors.NackError:
            self.outstanding.pop(correlation_id, None)
            raise refused(self.queue) from None

    def send(self, request: dict | bytes, correlation_id: str | None = None) -> str:
        """Publish a request (a dict, or raw bytes sent as they are) once the broker has
        confirmed it; returns its correlation id."""
        correlation_id = correlation_id or uuid.uuid4().hex
        body = request_body(request)
        self.outstanding[correlation_id] = body
        try:
            self._publish(body, correlation_id)
        except DROPPED as err:
            self._reconnect(err)  # publishes it again with the rest
        return correlation_id

    def poll(self, seconds: float = 0.0) -> None:
        """Take in the replies that arrive within `seconds`."""
        try:
            self.connection.process_data_events(time_limit=seconds)
        except DROPPED as err:
            self._reconnect(err)

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

    def stream(self, request: dict, timeout: float = 60.0) -> Iterator[dict]:
        """Send a streamed generate_text request (`"stream": true` is added) and yield
        its frames in sequence order, each once: a frame seen again (a stream restarted
        after a redelivery repeats its frames) is dropped. Ends after the frame with
        `done`; an error frame, or an error reply before any frame, raises ServeError."""
        cid = self.send({**request, "stream": True})
        deadline = time.monotonic() + timeout
        seen, order = 0, FrameOrder()
        while True:
            for reply in self.replies.get(cid, [])[seen:]:
                seen += 1
                for frame in order.add(reply):
                    yield frame
                    if frame.get("done"):
                        return
            if time.monotonic() > deadline:
                raise ServeError("timeout", f"stream {cid} did not finish within {timeout} s")
            self.poll(0.05)

    def consumers(self) -> int:
        """How many consumers the request queue has (0 if it does not exist): none means no
        service would answer, so a caller can say so at once instead of timing out."""
        channel = self.connection.channel()
        try:
            count = channel.queue_declare(self.queue, passive=True).method.consumer_count
        except amqp_errors.ChannelClosedByBroker:  # 404: no such queue
            return 0
        channel.close()
        return count

    def stream_text(self, request: dict, timeout: float = 60.0) -> Iterator[str]:
        """The new text of a streamed generate_text request, chunk by chunk."""
        for frame in self.stream(request, timeout):
            if "delta" in frame:
                yield frame["delta"]

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
