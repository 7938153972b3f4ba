"""The service's HTTP endpoint: `POST /v1/models/{id}/{op}`."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

from serve_client.replies import FrameOrder, ServeError, check, error_reply, parse_body, request_body

# Statuses after which the same request may go to another node: overloaded, draining.
RETRY_ELSEWHERE = (429, 503)


def http_call(base: str, model: str, op: str, body: dict | bytes, timeout: float = 30.0) -> tuple[int, dict]:
    """POST `body` (a request without model and op, or raw bytes) to
    BASE/v1/models/MODEL/OP; (status, reply), the reply decoded like an AMQP one."""
    data = request_body(body)
    request = urllib.request.Request(
        f"{base}/v1/models/{model}/{op}", data=data, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            status, headers, payload = r.status, r.headers, r.read()
    except urllib.error.HTTPError as err:
        status, headers, payload = err.code, err.headers, err.read()
    shape = (headers.get("x-shape") or "0,0").split(",")
    fields = (headers.get("x-fields") or "").split(",")
    return status, parse_body(headers.get("content-type"), payload, shape, fields, headers.get("x-dtype"))


def http_stream(
    bases: list[str],
    model: str,
    body: dict,
    request_id: str | None = None,
    timeout: float = 60.0,
    attempts: int = 5,
    resumed: list[tuple[str, int]] | None = None,
) -> Iterator[dict]:
    """POST a streamed generate_text request (`"stream": true` is added) to
    BASE/v1/models/MODEL/generate_text and yield its frames in order, each once.

    When the stream breaks before its `done` frame (the node died, the connection
    dropped, or the node answered 429 or 503), the same request goes to the next base,
    round robin, with `Last-Event-ID` set to the last frame received; the node sends
    only the frames after it. The `x-request-id` (`request_id`, else a new one) stays the
    same, so a body without a seed gets the same seed, and the same text, on every node.
    After `attempts` tries ServeError("unavailable"). An error frame or an error reply
    raises ServeError. Each resume is appended to `resumed` as (base, Last-Event-ID)."""
    data = request_body({**body, "stream": True})
    headers = {"content-type": "application/json", "x-request-id": request_id or uuid.uuid4().hex}
    order = FrameOrder()
    for attempt in range(attempts):
        base = bases[attempt % len(bases)]
        if order.next:
            headers["last-event-id"] = str(order.next - 1)
            if resumed is not None:
                resumed.append((base, order.next - 1))
        post = urllib.request.Request(f"{base}/v1/models/{model}/generate_text", data=data, headers=headers)
        try:
            with urllib.request.urlopen(post, timeout=timeout) as r:
                if r.headers.get("content-type") == "text/event-stream":
                    replies = sse_data(r)
                else:  # the stream ended before its first chunk: one JSON frame
                    replies = iter([json.loads(r.read())])
                for reply in replies:
                    for frame in order.add(reply):
                        yield frame
                        if frame.get("done"):
                            return
        except urllib.error.HTTPError as err:
            if err.code not in RETRY_ELSEWHERE:
                check(error_body(err))  # an error reply, or an error frame: raises
            time.sleep(min(0.1 * 2**attempt, 2.0))
        except (OSError, http.client.HTTPException):
            pass  # refused, reset or cut short: resume on the next node
    raise ServeError("unavailable", f"the stream broke {attempts} times; frames up to {order.next - 1} came")


def error_body(err: urllib.error.HTTPError) -> dict:
    """The JSON error reply of an error status; a body that is not one (a proxy's page,
    say) becomes a `bad_reply` error reply naming the status."""
    try:
        reply = json.loads(err.read())
    except ValueError:
        reply = None
    if isinstance(reply, dict) and isinstance(reply.get("error"), dict):
        return reply
    return error_reply("bad_reply", f"HTTP {err.code} without a JSON error reply")


def sse_data(response) -> Iterator[dict]:
    """The JSON of each complete server-sent event's `data` field, in order; an event
    cut off by the end of the response is dropped."""
    data = None
    for raw in response:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("data: "):
            data = line[len("data: ") :]
        elif not line and data is not None:
            yield json.loads(data)
            data = None
