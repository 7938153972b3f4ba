"""The service over RabbitMQ from asyncio, on aio-pika (`pip install serve-client[asyncio]`).

    async with AsyncClient() as client:
        replies = await asyncio.gather(*(client.call(r) for r in requests))

The same protocol as `Client`: requests published with confirms and `mandatory`, replies
acked once recorded, and a dropped connection reopened (aio-pika's robust connection,
retrying every second), after which the reply queue is declared again and every request still
awaiting its reply is published again.

The reply queue is exclusive and named by the client under `reply_prefix`, a prefix the
service accepts (its `REPLY_QUEUE_PREFIX`): a robust connection re-declares a queue by
its name, and a name the broker generated cannot be declared by a client.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import aio_pika
import aio_pika.exceptions as amqp_errors
import aiormq

from serve_client.amqp import DEFAULT_QUEUE, DEFAULT_URL
from serve_client.replies import FrameOrder, ServeError, is_last, reply_from

# What publishing on a connection that dropped raises; the reconnection takes over.
DROPPED = (aiormq.exceptions.ChannelInvalidStateError, aiormq.exceptions.ConnectionClosed)


class AsyncClient:
    """One robust connection with an exclusive reply queue; calls may overlap freely."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        queue: str = DEFAULT_QUEUE,
        name: str = "serve_client",
        reply_prefix: str = "serve_ex.reply.",
    ) -> None:
        """`name` is the connection name the broker shows."""
        self.url, self.queue, self.name = url, queue, name
        self.reply_name = f"{reply_prefix}{uuid.uuid4().hex}"
        self.outstanding: dict[str, bytes] = {}  # published, no (last) reply yet
        self.reconnects = 0
        self._inboxes: dict[str, asyncio.Queue[dict]] = {}

    async def __aenter__(self) -> AsyncClient:
        try:
            self.connection = await aio_pika.connect_robust(
                self.url, client_properties={"connection_name": self.name}, reconnect_interval=1
            )
        except (OSError, amqp_errors.AMQPError) as err:
            raise ServeError("disconnected", f"cannot reach the broker at {self.url} ({err!r})") from None
        self.channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        self.reply_queue = await self.channel.declare_queue(self.reply_name, exclusive=True, auto_delete=True)
        await self.reply_queue.consume(self._on_reply)
        self.connection.reconnect_callbacks.add(self._republish)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.connection.close()

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        reply = reply_from(message.content_type, message.body, message.headers)
        cid = message.correlation_id
        if is_last(reply):
            self.outstanding.pop(cid, None)
        if cid in self._inboxes:
            self._inboxes[cid].put_nowait(reply)
        await message.ack()

    async def _republish(self, *_connection) -> None:
        """After a reconnect the channel and a new reply queue are back: every request
        still waiting goes out again, addressed to the new queue."""
        self.reconnects += 1
        for cid, body in list(self.outstanding.items()):
            await self._publish(body, cid)

    async def _publish(self, body: bytes, correlation_id: str) -> None:
        message = aio_pika.Message(
            body,
            content_type="application/json",
            correlation_id=correlation_id,
            reply_to=self.reply_name,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        try:
            await self.channel.default_exchange.publish(message, routing_key=self.queue, mandatory=True)
        except DROPPED:
            pass  # still outstanding: the reconnection publishes it again
        except amqp_errors.PublishError:  # returned: no queue took it
            self.outstanding.pop(correlation_id, None)
            message = f"no queue {self.queue!r} took the request; is the service up?"
            raise ServeError("unroutable", message) from None
        except amqp_errors.DeliveryError:  # nacked
            self.outstanding.pop(correlation_id, None)
            raise ServeError("refused", f"the broker refused the request to {self.queue!r}") from None

    async def send(self, request: dict | bytes) -> str:
        """Publish a request (a dict, or raw bytes sent as they are); returns its
        correlation id, for `wait`. It returns once the broker has confirmed the request,
        or, while the connection is down, once the request is queued for the reconnection."""
        cid = uuid.uuid4().hex
        body = request if isinstance(request, bytes) else json.dumps(request).encode()
        self._inboxes[cid] = asyncio.Queue()
        self.outstanding[cid] = body
        await self._publish(body, cid)
        return cid

    async def wait(self, correlation_id: str, timeout: float = 30.0) -> dict:
        """The reply to a request sent with `send`; ServeError("timeout") if none comes
        in time."""
        try:
            return await self._next(correlation_id, timeout)
        finally:
            self._forget(correlation_id)

    async def call(self, request: dict | bytes, timeout: float = 30.0) -> dict:
        """The reply to one request; ServeError("timeout") if none comes in time."""
        return await self.wait(await self.send(request), timeout)

    async def stream(self, request: dict, timeout: float = 60.0) -> AsyncIterator[dict]:
        """A streamed generate_text request's frames in sequence order, each once (see
        `Client.stream`); ServeError on an error frame or when `timeout` passes."""
        cid = await self.send({**request, "stream": True})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        order = FrameOrder()
        try:
            while True:
                reply = await self._next(cid, deadline - loop.time())
                for frame in order.add(reply):
                    yield frame
                    if frame.get("done"):
                        return
        finally:
            self._forget(cid)

    async def _next(self, cid: str, timeout: float) -> dict:
        try:
            return await asyncio.wait_for(self._inboxes[cid].get(), max(timeout, 0))
        except TimeoutError:
            raise ServeError("timeout", f"no reply to {cid} within the time allowed") from None

    def _forget(self, cid: str) -> None:
        self._inboxes.pop(cid, None)
        self.outstanding.pop(cid, None)
