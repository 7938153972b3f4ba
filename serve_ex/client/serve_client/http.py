"""The service's HTTP endpoint: `POST /v1/models/{id}/{op}`."""

from __future__ import annotations

import urllib.error
import urllib.request

from serve_client.replies import parse_body, request_body


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
