"""End to end: the Python client, RabbitMQ, the Elixir service, the NIF, and back.

Needs the broker on 127.0.0.1:5672, Elixir, and the NIF built (`make test` provides
all three). Served outputs are compared with infer_rs called directly on the same
files and seeds.
"""

import asyncio
import http.client
import json
import random
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from serve_client import Client, ServeError, http_call, http_stream, tensor
from serve_client.aio import AsyncClient
from serve_client.http import sse_data
from serve_harness import kill_and_recover
from serve_harness.load import Load
from serve_harness.service import Service

import infer_rs

REPLY_SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "shared_schema/wire/reply.schema.json").read_text()
)
EXAMPLES = json.loads(
    (Path(__file__).resolve().parents[2] / "shared_schema/examples/requests.json").read_text()
)


@pytest.fixture(scope="module")
def service(trained, tmp_path_factory):
    queue = f"serve_ex.e2e.{uuid.uuid4().hex[:8]}"
    log = tmp_path_factory.mktemp("service") / "serve_ex.log"
    with Service(trained["vae"].parent, queue, log, ENGINE_THREADS="1") as running:
        yield running


@pytest.fixture(scope="module")
def client(service):
    with Client(queue=service.env["REQUEST_QUEUE"]) as c:
        yield c


def test_readiness_says_what_the_engine_runs_on(service):
    """ENGINE_THREADS=1 in the engine itself (left alone, it takes every core), on the
    path infer_rs picks."""
    info = infer_rs.cpu_info()
    engine = service.health()["engine"]
    assert engine == {"cpu": info["model_name"], "isa": info["isa"], "threads": 1}


def test_served_images_equal_infer_rs(client, trained):
    for name in ("vae", "wgan"):
        served = tensor(client.call({"v": 1, "model": name, "op": "generate", "n": 16, "seed": 42}))
        direct = infer_rs.Model(trained[name]).generate(16, seed=42)
        assert served.shape == (16, 784)
        np.testing.assert_array_equal(served, direct, err_msg=name)
    z = np.random.default_rng(0).standard_normal((5, 20)).astype(np.float32)
    served = tensor(client.call({"v": 1, "model": "vae", "op": "decode", "z": z.tolist()}))
    np.testing.assert_array_equal(served, infer_rs.Model(trained["vae"]).decode(z))


def test_binary_replies_carry_the_json_replies_values(client, trained):
    """ "encoding": "f32" replies are raw float32 bodies (content type and shape in the
    AMQP properties), equal to the base64 of the default JSON reply and to infer_rs."""
    generate = {"v": 1, "model": "vae", "op": "generate", "n": 16, "seed": 42}
    as_json, as_f32 = client.call(generate), client.call({**generate, "encoding": "f32"})
    assert isinstance(as_f32["data"], np.ndarray) and isinstance(as_json["data"], str)
    np.testing.assert_array_equal(tensor(as_f32), tensor(as_json))
    np.testing.assert_array_equal(tensor(as_f32), infer_rs.Model(trained["vae"]).generate(16, seed=42))
    x = tensor(as_json)[:3].tolist()
    encode = {"v": 1, "model": "vae", "op": "encode", "x": x}
    posterior_json, posterior_f32 = client.call(encode), client.call({**encode, "encoding": "f32"})
    for key in ("mu", "logvar"):
        assert posterior_f32[key].shape == (3, 20)
        np.testing.assert_array_equal(tensor(posterior_f32, key), tensor(posterior_json, key))
    bad = client.call({**generate, "encoding": "f16"})
    assert bad["ok"] is False and bad["error"]["code"] == "invalid_argument"


def test_http_replies_equal_the_queued_ones(service, client, trained):
    """POST /v1/models/{id}/{op} runs through the same batchers: the same values as AMQP
    and infer_rs, JSON or binary."""
    base = f"http://127.0.0.1:{service.port}"
    status, reply = http_call(base, "vae", "generate", {"n": 4, "seed": 7})
    queued = client.call({"v": 1, "model": "vae", "op": "generate", "n": 4, "seed": 7})
    assert status == 200 and reply == queued
    status, binary = http_call(base, "vae", "generate", {"n": 4, "seed": 7, "encoding": "f32"})
    assert status == 200 and isinstance(binary["data"], np.ndarray)
    np.testing.assert_array_equal(tensor(binary), infer_rs.Model(trained["vae"]).generate(4, seed=7))
    status, posterior = http_call(base, "vae", "encode", {"x": tensor(binary).tolist(), "encoding": "f32"})
    assert status == 200 and posterior["mu"].shape == (4, 20) and posterior["logvar"].shape == (4, 20)
    status, text = http_call(base, "gpt", "generate_text", {"v": 1, "prompt": "ROMEO:", "max_new_tokens": 30})
    direct = infer_rs.Model(trained["gpt"]).generate_text("ROMEO:", 30)
    assert (status, text) == (
        200,
        {"v": 1, "ok": True, "text": direct, "finish_reason": "length", "new_tokens": 30},
    )


@pytest.mark.parametrize(
    "model, op, body, status, code",
    [
        ("nope", "generate", {"n": 1}, 404, "unknown_model"),
        ("vae", "generate_text", {"prompt": "a", "max_new_tokens": 1}, 404, "unknown_op"),
        ("vae", "fly", {"n": 1}, 404, "unknown_op"),
        ("vae", "generate", {"n": 0}, 400, "invalid_argument"),
        ("vae", "generate", {"n": 1, "model": "wgan"}, 400, "malformed_request"),
        ("vae", "generate", b"{not json", 400, "malformed_request"),
        ("vae", "generate", {"n": 1, "encoding": "f16"}, 400, "invalid_argument"),
        ("vae", "generate", {"n": 1000}, 413, "too_large"),
        ("vae", "generate", b" " * (1 << 20) + b"{}", 413, "too_large"),
    ],
    ids=[
        "unknown-model",
        "op-of-another-arch",
        "unknown-op",
        "invalid",
        "model-in-body",
        "not-json",
        "bad-encoding",
        "n-too-large",
        "body-too-large",
    ],
)
def test_http_errors_map_to_statuses(service, model, op, body, status, code):
    got_status, reply = http_call(f"http://127.0.0.1:{service.port}", model, op, body)
    assert (got_status, reply["ok"], reply["error"]["code"]) == (status, False, code), reply
    assert reply["error"]["message"]


def test_http_deadlines_and_methods(service):
    base = f"http://127.0.0.1:{service.port}"
    request = urllib.request.Request(
        f"{base}/v1/models/vae/generate",
        data=b'{"n": 1}',
        headers={"x-deadline-ms": "1000", "content-type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as late:
        urllib.request.urlopen(request, timeout=10)
    assert late.value.code == 504 and json.loads(late.value.read())["error"]["code"] == "deadline_exceeded"
    with pytest.raises(urllib.error.HTTPError) as get:
        urllib.request.urlopen(f"{base}/v1/models/vae/generate", timeout=10)
    assert get.value.code == 405 and get.value.headers["allow"] == "POST"


def test_http_refuses_other_content_types_and_hosts(service):
    """415 for a body that is not sent as JSON (a form post, as curl -d sends it); 421
    for a Host that is not one of HTTP_HOSTS (a page reaching loopback through DNS
    rebinding names its own host), on inference and metrics alike; health answers."""

    def status(path: str, headers: dict, body: bytes | None = b'{"n": 1}') -> int:
        port = service.port if path.startswith("/v1/") else service.health_port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("POST" if body else "GET", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    json_type = {"content-type": "application/json"}
    assert status("/v1/models/vae/generate", json_type) == 200
    assert status("/v1/models/vae/generate", {"content-type": "application/json; charset=utf-8"}) == 200
    assert status("/v1/models/vae/generate", {"content-type": "application/x-www-form-urlencoded"}) == 415
    assert status("/v1/models/vae/generate", {}) == 415
    rebound = {"host": f"attacker.example:{service.port}"}
    assert status("/v1/models/vae/generate", {**json_type, **rebound}) == 421
    assert status("/metrics", rebound, body=None) == 421
    assert status("/metrics", {"host": f"localhost:{service.health_port}"}, body=None) == 200
    assert status("/livez", rebound, body=None) == 200


def test_http_chunked_bodies_are_read_up_to_the_limit_and_a_slow_one_gets_408(service):
    """A chunked body has no length up front: it is served when within the limit, and
    refused with 413 once it passes it. A body that stops short of its declared length
    gets 408 when the read period (10 s) ends, not 413."""
    path = "/v1/models/vae/generate"

    def post_chunked(chunks) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
        try:
            conn.request("POST", path, body=iter(chunks), headers={"content-type": "application/json"})
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    status, reply = post_chunked([b'{"n": 1,', b' "seed": 3}'])
    assert status == 200 and reply["shape"] == [1, 784], reply
    status, reply = post_chunked([b'{"n": 1, "seed": 3, "pad": "', *[b"x" * (1 << 16)] * 17, b'"}'])
    assert (status, reply["error"]["code"]) == (413, "too_large")

    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as raw:
        raw.sendall(
            f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            'content-length: 100\r\n\r\n{"n": 1'.encode()
        )
        head = raw.recv(4096).decode()
    assert head.startswith("HTTP/1.1 408"), head


def close_connection_named(name: str) -> None:
    """Make the broker close the client connection called `name`."""
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pid = next(line.split("\t")[0] for line in listing.splitlines() if name in line)
    subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "test: dropped on purpose"], check=True)


def test_replies_survive_the_broker_closing_the_reply_connection(trained, tmp_path):
    """The broker closes the service's reply connection under load (as it does when it
    chokes on a reply): the replies still unconfirmed at the close are published again,
    once, on a new connection; every request is answered right and the client never
    re-sends. The broker closes it up to five times, each after the last reconnect,
    until a close catches replies unconfirmed."""
    queue = f"serve_ex.reply_close.{uuid.uuid4().hex[:8]}"
    log = tmp_path / "node.log"
    caught = re.compile(r"reply channel closed .* with (\d+) replies unconfirmed")
    with Service(trained["vae"].parent, queue, log) as node:
        name = f"ServeEx.ReplyConnection on {node.node}@"
        load = Load(trained["vae"].parent, queue)
        closer: threading.Thread | None = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            unconfirmed = [int(n) for n in caught.findall(log.read_text())]
            settled = closer is None or not closer.is_alive()
            reconnected = log.read_text().count("ServeEx.ReplyConnection connected") > len(unconfirmed)
            if settled and reconnected and (len(unconfirmed) == 5 or any(unconfirmed)):
                break
            if settled and reconnected and load.counts["sent"] > 200 * (len(unconfirmed) + 1):
                closer = threading.Thread(target=close_connection_named, args=(name,))
                closer.start()
            load.fill()
            load.poll()
        counts = load.finish()
        alive = node.process.poll() is None
    assert alive and (counts["lost"], counts["wrong"], counts["reconnects"]) == (0, 0, 0), counts
    assert any(unconfirmed), f"no close caught a reply unconfirmed in {len(unconfirmed)} tries"
    # a republished reply may have reached its queue before the close: at most one
    # duplicate per reply published again, and none quarantined (that takes two closes)
    assert counts["duplicates"] <= sum(unconfirmed) and "quarantining" not in log.read_text()


def test_the_raw_command_exits_non_zero_on_an_error_reply(service):
    """`python -m serve_client raw BODY` prints the reply as it came; an error reply
    makes it exit 1, so a script can tell."""
    queue = service.env["REQUEST_QUEUE"]

    def raw(body: dict) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "serve_client", "--queue", queue, "raw", json.dumps(body)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    good = raw({"v": 1, "model": "vae", "op": "generate", "n": 1, "seed": 1})
    assert good.returncode == 0 and json.loads(good.stdout)["ok"] is True
    bad = raw({"v": 1, "model": "vae", "op": "generate", "n": 0})
    assert bad.returncode == 1 and json.loads(bad.stdout)["error"]["code"] == "invalid_argument"


def serve_client(*argv: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "serve_client", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_the_command_line_streams_sends_over_http_and_names_a_missing_service(service, trained):
    """`stream` prints the text the engine gives the same seed; `http` prints the reply
    and exits 1 on an error; with no service on the queue, one error line at once."""
    queue, base = service.env["REQUEST_QUEUE"], f"http://127.0.0.1:{service.port}"
    streamed = serve_client(
        "--queue", queue, "stream", "--max-new-tokens", "50", "--temperature", "0.8", "--seed", "4"
    )
    want = infer_rs.Model(trained["gpt"]).generate_text("ROMEO:", 50, temperature=0.8, seed=4)
    assert streamed.returncode == 0 and streamed.stdout == want + "\n"
    body = json.dumps({"prompt": "ROMEO:", "max_new_tokens": 20})
    good = serve_client("http", "gpt", "generate_text", body, "--base", base)
    assert good.returncode == 0 and json.loads(good.stdout)["text"] == infer_rs.Model(
        trained["gpt"]
    ).generate_text("ROMEO:", 20)
    images = serve_client("http", "vae", "generate", '{"n": 2}', "--base", base)
    assert images.returncode == 0 and json.loads(images.stdout)["data"] == "<2 x 784 float32>"
    bad = serve_client("http", "vae", "generate", '{"n": 0}', "--base", base)
    assert bad.returncode == 1 and json.loads(bad.stdout)["error"]["code"] == "invalid_argument"
    started = time.monotonic()
    nobody = serve_client("--queue", f"serve_ex.nobody.{uuid.uuid4().hex[:6]}", "text")
    assert nobody.returncode == 1 and time.monotonic() - started < 10
    assert nobody.stderr.startswith("error: unavailable: no service consumes serve_ex.nobody.")


def test_the_client_survives_a_dropped_connection(service):
    """The broker closes the client's connection with a request unanswered (its reply, if
    any, dies with the exclusive reply queue): the client reconnects, declares a new
    reply queue, publishes the request again and gets its answer."""
    name = f"e2e-reconnect-{uuid.uuid4().hex[:6]}"
    with Client(queue=service.env["REQUEST_QUEUE"], name=name) as client:
        request = {"v": 1, "model": "gpt", "op": "generate_text", "prompt": "A", "max_new_tokens": 20}
        with service.frozen():  # so that the request is still unanswered at the close
            cid = client.send(request)
            close_connection_named(name)
        reply = client.wait(cid, timeout=60)
        assert reply["ok"] is True and client.reconnects == 1
        assert client.call({"v": 1, "model": "vae", "op": "generate", "n": 1})["ok"] is True


def test_the_async_client_overlaps_calls_and_streams(service, trained):
    """Eight overlapping calls from one asyncio task group, each equal to infer_rs on its
    own seed; a streamed text reassembles into the engine's text."""
    queue = service.env["REQUEST_QUEUE"]
    prompt = {"v": 1, "model": "gpt", "op": "generate_text", "prompt": "ROMEO:", "max_new_tokens": 40}

    async def run():
        async with AsyncClient(queue=queue) as client:
            requests = [{"v": 1, "model": "vae", "op": "generate", "n": 2, "seed": s} for s in range(8)]
            replies = await asyncio.gather(*(client.call(r) for r in requests))
            frames = [frame async for frame in client.stream(prompt)]
            return replies, frames, client.outstanding

    replies, frames, outstanding = asyncio.run(run())
    vae = infer_rs.Model(trained["vae"])
    for seed, reply in enumerate(replies):
        np.testing.assert_array_equal(tensor(reply), vae.generate(2, seed=seed), err_msg=str(seed))
    assert [f["seq"] for f in frames] == list(range(len(frames))) and frames[-1]["done"]
    text = "ROMEO:" + "".join(f.get("delta", "") for f in frames)
    assert text == infer_rs.Model(trained["gpt"]).generate_text("ROMEO:", 40)
    assert outstanding == {}


def test_the_async_client_survives_a_dropped_connection(service):
    """As `test_the_client_survives_a_dropped_connection`, from asyncio: the robust
    connection comes back, the reply queue is declared again, the request goes out again."""
    name = f"e2e-async-reconnect-{uuid.uuid4().hex[:6]}"
    request = {"v": 1, "model": "gpt", "op": "generate_text", "prompt": "A", "max_new_tokens": 20}

    async def run():
        async with AsyncClient(queue=service.env["REQUEST_QUEUE"], name=name) as client:
            # frozen until the request has gone out again: its first reply would otherwise
            # reach the reply queue, declared again under its name, before that
            with service.frozen():
                cid = await client.send(request)
                await asyncio.to_thread(close_connection_named, name)
                for _ in range(160):  # 8 s, within the node's heartbeats
                    if client.republished:
                        break
                    await asyncio.sleep(0.05)
            reply = await client.wait(cid, 60)
            again = await client.call({"v": 1, "model": "vae", "op": "generate", "n": 1})
            return reply, again, client.reconnects, client.republished

    reply, again, reconnects, republished = asyncio.run(run())
    assert reply["ok"] is True and again["ok"] is True
    assert reconnects == 1 and republished == 1


def test_the_async_client_says_when_no_queue_takes_a_request():
    async def run():
        async with AsyncClient(queue=f"serve_ex.nobody.{uuid.uuid4().hex[:6]}") as client:
            await client.call({"v": 1, "model": "vae", "op": "generate", "n": 1}, timeout=5)

    with pytest.raises(ServeError, match="unroutable"):
        asyncio.run(run())


def test_the_gpt_small_preset_is_served(client, trained):
    request = {"v": 1, "model": "gpt-small", "op": "generate_text", "prompt": "ROMEO:", "max_new_tokens": 40}
    direct = infer_rs.Model(trained["gpt-small"]).generate_text("ROMEO:", 40)
    assert client.call(request) == {
        "v": 1,
        "ok": True,
        "text": direct,
        "finish_reason": "length",
        "new_tokens": 40,
    }


def test_served_text_equals_infer_rs(client, trained):
    request = {
        "v": 1,
        "model": "gpt",
        "op": "generate_text",
        "prompt": "ROMEO:",
        "max_new_tokens": 120,
        "temperature": 0.8,
        "top_k": 20,
        "seed": 3,
    }
    reply = client.call(request)
    direct = infer_rs.Model(trained["gpt"]).generate_text("ROMEO:", 120, temperature=0.8, top_k=20, seed=3)
    assert reply == {"v": 1, "ok": True, "text": direct, "finish_reason": "length", "new_tokens": 120}


@pytest.mark.parametrize("example", EXAMPLES["examples"], ids=lambda e: e["name"])
def test_every_example_gets_its_labelled_reply(client, example):
    body = example["raw"].encode() if "raw" in example else json.dumps(example["body"]).encode()
    reply = client.call(body)
    if example["expect"] == "ok":
        assert reply["ok"] is True, reply
    else:
        assert reply["ok"] is False and reply["error"]["code"] == example["expect"], reply
        assert reply["error"]["message"]


def test_random_bytes_get_error_replies_and_the_service_keeps_serving(client):
    rng = random.Random(7)
    ids = [client.send(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))) for _ in range(100)]
    replies = [client.wait(i) for i in ids]
    assert all(r["ok"] is False and r["error"]["code"] == "malformed_request" for r in replies)
    assert tensor(client.call({"v": 1, "model": "vae", "op": "generate", "n": 1, "seed": 1})).shape == (
        1,
        784,
    )


def test_kill_and_recover_loses_nothing(trained, tmp_path):
    queue = f"serve_ex.kill.{uuid.uuid4().hex[:8]}"
    with Service(trained["vae"].parent, queue, tmp_path / "serve_ex.log") as service:
        report = kill_and_recover.run(
            service,
            trained["vae"].parent,
            total=600,
            inflight=32,
            url="amqp://guest:guest@127.0.0.1:5672/%2F",
            queue=queue,
        )
    print(report.summary())
    assert [k["what"].split()[0] for k in report.kills] == ["producer", "vae", "BEAM", "BEAM"]
    assert report.kills[-1]["exit_status"] == 0
    assert report.sent >= 600 and (report.lost, report.wrong, report.reconnects) == (0, 0, 0)


STREAM = {"v": 1, "model": "gpt", "op": "generate_text", "prompt": "ROMEO:", "temperature": 0.8, "top_k": 20}


def test_a_stream_reassembles_to_the_unstreamed_text(client, trained):
    """Frames come in sequence, each valid against the reply schema, the first token
    alone, then 8 tokens a chunk, and their text is the text of the same request
    unstreamed."""
    request = {**STREAM, "max_new_tokens": 44, "seed": 9}
    frames = list(client.stream(request))
    for frame in frames:
        jsonschema.validate(frame, REPLY_SCHEMA)
    assert [f["seq"] for f in frames] == list(range(len(frames))) and frames[-1] == {
        "v": 1,
        "ok": True,
        "seq": len(frames) - 1,
        "done": True,
        "finish_reason": "length",
    }
    assert [len(f["delta"]) for f in frames[:-1]] == [1, 7, 8, 8, 8, 8, 4]
    whole = client.call(request)["text"]
    assert request["prompt"] + "".join(f["delta"] for f in frames[:-1]) == whole
    direct = infer_rs.Model(trained["gpt"]).generate_text("ROMEO:", 44, temperature=0.8, top_k=20, seed=9)
    assert whole == direct


def test_an_http_stream_is_server_sent_events_of_the_same_frames(service, client):
    request = {**STREAM, "max_new_tokens": 30, "seed": 2}
    body = json.dumps({k: v for k, v in request.items() if k not in ("model", "op")} | {"stream": True})
    post = urllib.request.Request(
        f"http://127.0.0.1:{service.port}/v1/models/gpt/generate_text",
        data=body.encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(post, timeout=30) as r:
        assert r.headers["content-type"] == "text/event-stream"
        events = [e for e in r.read().decode().split("\n\n") if e]
    frames = []
    for i, event in enumerate(events):
        lines = dict(line.split(": ", 1) for line in event.splitlines())
        assert lines["id"] == str(i) and lines["event"] == ("done" if i == len(events) - 1 else "chunk")
        frames.append(json.loads(lines["data"]))
    assert frames[-1]["done"] is True and frames[-1]["ok"] is True
    text = request["prompt"] + "".join(f["delta"] for f in frames[:-1])
    assert text == client.call(request)["text"]


def test_an_http_stream_resumes_after_the_frame_last_event_id_names(service):
    """The same request, with the same x-request-id and no seed, and Last-Event-ID: the
    frames after it, identical to those of the uninterrupted stream; without the
    request id, or with a Last-Event-ID that is no frame number, a 400 that says why."""
    base = f"http://127.0.0.1:{service.port}"
    body = {"prompt": "ROMEO:", "max_new_tokens": 40, "temperature": 0.8, "top_k": 20}
    whole = list(http_stream([base], "gpt", body, request_id="resume-me"))

    def post(**headers: str) -> urllib.request.Request:
        headers = {"content-type": "application/json", **{k.replace("_", "-"): v for k, v in headers.items()}}
        data = json.dumps(body | {"stream": True}).encode()
        return urllib.request.Request(f"{base}/v1/models/gpt/generate_text", data=data, headers=headers)

    with urllib.request.urlopen(post(x_request_id="resume-me", last_event_id="2"), timeout=30) as r:
        rest = list(sse_data(r))
    assert len(whole) == 7 and rest == whole[3:]  # 1 + 7 + 8 x 4 tokens, then done
    refusals = [
        (post(last_event_id="2"), "x-request-id"),
        (post(x_request_id="resume-me", last_event_id="-1"), "frame number"),
        # beyond the last frame any stream can have: refused before anything runs
        (post(x_request_id="resume-me", last_event_id="1025"), "frame number from 0 to 1024"),
        (post(x_request_id="resume-me", last_event_id="9" * 4000), "frame number"),
    ]
    for bad, named in refusals:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bad, timeout=30)
        assert refused.value.code == 400
        assert named in json.loads(refused.value.read())["error"]["message"]


def test_an_http_stream_raises_the_error_it_is_answered(service):
    """An error reply ends the stream with its code; a status without a JSON error reply
    (a proxy's page) is named, not decoded as one."""
    body = {"prompt": "ROMEO:", "max_new_tokens": 8}
    with pytest.raises(ServeError) as unknown:
        list(http_stream([f"http://127.0.0.1:{service.port}"], "no-such-model", body))
    assert unknown.value.code == "unknown_model"

    class Proxy(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (the name http.server calls)
            self.send_response(502)
            self.send_header("content-type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>bad gateway</html>")

        def log_message(self, *args):
            pass

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ServeError) as bad:
            list(http_stream([f"http://127.0.0.1:{proxy.server_port}"], "gpt", body))
        assert bad.value.code == "bad_reply" and "HTTP 502" in str(bad.value)
    finally:
        proxy.shutdown()


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def test_an_http_stream_cut_by_a_killed_node_resumes_on_another(trained, tmp_path):
    """SIGKILL of the node mid-stream over HTTP: the client sends the request again to a
    second node with its x-request-id and Last-Event-ID, and that node, deriving the same
    seed, sends the frames after the last one received. The whole equals the stream of
    the same request from the second node alone."""
    queue = f"serve_ex.http_stream.{uuid.uuid4().hex[:8]}"
    models = trained["vae"].parent
    body = {"prompt": "ROMEO:", "max_new_tokens": 1024, "temperature": 0.8, "top_k": 20}
    first = Service(models, queue, tmp_path / "first.log")
    second = Service(models, queue, tmp_path / "second.log")
    bases = [f"http://127.0.0.1:{node.port}" for node in (first, second)]
    with first, second:
        frames, resumed = [], []
        try:
            for frame in http_stream(bases, "gpt", body, request_id="cut-short", resumed=resumed):
                frames.append(frame)
                if frame["seq"] == 2 and not resumed:
                    first.sigkill()
        except ServeError as err:  # what the surviving node said
            pytest.fail(f"{err}; resumed {resumed}; the second node's log ends:\n{tail(second.log)}")
        alone = list(http_stream(bases[1:], "gpt", body, request_id="cut-short"))
    assert len(resumed) == 1 and resumed[0][0] == bases[1] and resumed[0][1] >= 2
    assert [f["seq"] for f in frames] == list(range(len(frames))) and frames[-1]["done"]
    assert sum(len(f.get("delta", "")) for f in frames) == 1024
    assert frames == alone


def test_a_stream_cut_by_a_killed_node_completes_after_redelivery(trained, tmp_path):
    """SIGKILL of the node mid-stream: the request goes back to the queue, a new node
    streams it again from the start (the same frames: the seed comes from the
    correlation id), and the client, dropping the frames it has seen, ends with the
    whole text. Every repeated frame equals its first copy, and the whole equals the
    stream of the same request (same correlation id) run without a kill."""
    queue = f"serve_ex.stream.{uuid.uuid4().hex[:8]}"
    models = trained["vae"].parent
    request = {**STREAM, "max_new_tokens": 1024}  # no seed: derived from the correlation id
    first = Service(models, queue, tmp_path / "first.log")
    with first, Client(queue=queue) as client:
        frames, restarted = [], None
        for frame in client.stream(request, timeout=300):
            frames.append(frame)
            if frame["seq"] == 2 and restarted is None:
                first.sigkill()
                restarted = Service(models, queue, tmp_path / "second.log")
                restarted.start()
        cid = next(iter(client.replies))
        received = client.replies[cid]
    try:
        with Client(queue=queue) as again:
            again.send({**request, "stream": True}, correlation_id=cid)
            while cid in again.outstanding:
                again.poll(0.05)
            alone = sorted(again.replies[cid], key=lambda frame: frame["seq"])
    finally:
        restarted.stop()
    assert [f["seq"] for f in frames] == list(range(len(frames))) and frames[-1]["done"]
    # the second node sent the first frames again; the client dropped them, and each
    # repeat is the frame it repeats, not the start of another generation
    assert len(received) > len(frames)
    assert all(frame == frames[frame["seq"]] for frame in received)
    assert sum(len(f.get("delta", "")) for f in frames) == 1024
    assert frames == alone
