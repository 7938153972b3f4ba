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
import uuid
from collections.abc import AsyncIterator

import aio_pika
import aio_pika.exceptions as amqp_errors
import aiormq

from serve_client.amqp import DEFAULT_QUEUE, DEFAULT_URL, reply_queue_name
from serve_client.replies import (
    FrameOrder,
    ServeError,
    error_reply,
    is_last,
    refused,
    reply_from,
    request_body,
    unroutable,
)

# What a publish raises when the connection or channel goes down under it (aiormq fails
# a pending confirm with whatever closed the connection); it is published again.
DROPPED = (
    ConnectionError,
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelClosed,
    aiormq.exceptions.ChannelInvalidStateError,
)


class AsyncClient:
    """One robust connection with an exclusive reply queue; calls may overlap freely."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        queue: str = DEFAULT_QUEUE,
        name: str = "serve_client",
        reply_prefix: str = "serve_ex.reply.",
        user_id: str | None = None,
    ) -> None:
        """`name` is the connection name the broker shows. `user_id`: the broker user of
        `url`, for a service that requires it (`AMQP_REQUIRE_USER_ID`); requests carry it,
        and the reply queue is one of that user's own (`reply_prefix` + user + ".")."""
        self.url, self.queue, self.name, self.user_id = url, queue, name, user_id
        self.reply_name = reply_queue_name(reply_prefix, user_id)
        self.outstanding: dict[str, bytes] = {}  # published, no (last) reply yet
        self.reconnects = 0
        self.republished = 0  # requests published again after a reconnect
        self._publishing: set[str] = set()  # requests in their first publish
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
        self._deliver(cid, reply)
        await message.ack()

    def _deliver(self, cid: str, reply: dict) -> None:
        if cid in self._inboxes:
            self._inboxes[cid].put_nowait(reply)

    async def _republish(self, *_connection) -> None:
        """After a reconnect the channel and the reply queue are back: every request that
        was published and is still unanswered goes out again. One that fails gets its
        error as its reply; the others are not held up by it. (A request still in its
        first publish is left to it: it retries by itself.)"""
        self.reconnects += 1
        for cid, body in list(self.outstanding.items()):
            if cid in self._publishing:
                continue
            try:
                await self._publish_once(body, cid)
                self.republished += 1
            except ServeError as err:
                self.outstanding.pop(cid, None)
                self._deliver(cid, error_reply(err.code, str(err)))
            except DROPPED:
                pass  # down again: the next reconnection tries again

    async def _publish(self, body: bytes, correlation_id: str) -> None:
        """Publish until the broker confirms, waiting out a dropped connection (the
        robust connection comes back by itself)."""
        self._publishing.add(correlation_id)
        try:
            while True:
                try:
                    return await self._publish_once(body, correlation_id)
                except DROPPED:
                    await asyncio.sleep(0.1)  # the connection may not know yet that it is down
                    await self.channel.ready()
        finally:
            self._publishing.discard(correlation_id)

    async def _publish_once(self, body: bytes, correlation_id: str) -> None:
        message = aio_pika.Message(
            body,
            content_type="application/json",
            correlation_id=correlation_id,
            reply_to=self.reply_name,
            user_id=self.user_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        try:
            await self.channel.default_exchange.publish(message, routing_key=self.queue, mandatory=True)
        except amqp_errors.PublishError:  # returned: no queue took it
            raise unroutable(self.queue) from None
        except amqp_errors.DeliveryError:  # nacked
            raise refused(self.queue) from None

    async def send(self, request: dict | bytes) -> str:
        """Publish a request (a dict, or raw bytes sent as they are); returns its
        correlation id, for `wait`, once the broker has confirmed the request. While the
        connection is down it waits for it to come back: bound it with `call`'s timeout
        or `asyncio.wait_for`."""
        cid = uuid.uuid4().hex
        body = request_body(request)
        self._inboxes[cid] = asyncio.Queue()
        self.outstanding[cid] = body
        try:
            await self._publish(body, cid)
        except BaseException:
            self._forget(cid)
            raise
        return cid

    async def wait(self, correlation_id: str, timeout: float = 30.0) -> dict:
        """The reply to a request sent with `send`; ServeError("timeout") if none comes
        in time."""
        try:
            return await self._next(correlation_id, timeout)
        finally:
            self._forget(correlation_id)

    async def call(self, request: dict | bytes, timeout: float = 30.0) -> dict:
        """The reply to one request, sent and answered within `timeout` seconds;
        ServeError("timeout") if not."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            cid = await asyncio.wait_for(self.send(request), timeout)
        except TimeoutError:
            raise ServeError("timeout", f"the request was not sent within {timeout} s") from None
        return await self.wait(cid, deadline - loop.time())

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
