"""A hostile client against the real service and broker (loopback only, bounded loops).

Whatever the attacker sends, the service must keep serving valid requests in the same
OS process, no innocent request may fail, and the service must publish nothing
anywhere but a legitimate reply queue.
"""

import base64
import json
import os
import re
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pika
import pytest
from serve_client import Client, http_call, tensor
from serve_harness.service import Service

URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEAD_LETTER_EXCHANGE = "serve_ex.dlx"


@pytest.fixture(scope="module")
def service(trained, tmp_path_factory):
    queue = f"serve_ex.hostile.{uuid.uuid4().hex[:8]}"
    with Service(trained["vae"].parent, queue, tmp_path_factory.mktemp("hostile") / "serve_ex.log") as s:
        yield s


@pytest.fixture
def broker():
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    yield connection.channel()
    connection.close()


@pytest.fixture
def dead_letters(service, broker):
    """A private copy of what the broker dead-letters from the service's request queue."""
    name = broker.queue_declare("", exclusive=True).method.queue
    broker.queue_bind(name, DEAD_LETTER_EXCHANGE, routing_key=service.env["REQUEST_QUEUE"])

    def drain() -> list[tuple[str, dict]]:
        out = []
        while (got := broker.basic_get(name, auto_ack=True))[0]:
            out.append((got[1].correlation_id, json.loads(got[2])))
        return out

    return drain


def innocent_requests(client: Client, count: int = 8) -> list[str]:
    return [client.send({"v": 1, "model": "vae", "op": "generate", "n": 1, "seed": s}) for s in range(count)]


def assert_all_answered(client: Client, ids: list[str]) -> None:
    for cid in ids:
        assert tensor(client.wait(cid)).shape == (1, 784)


def forged_direct_reply_to(node: bytes) -> str:
    """A direct reply-to name in the broker's form, with a made-up pid on `node`."""
    pid = bytes([131, 88, 118]) + len(node).to_bytes(2, "big") + node + os.urandom(12)
    key = base64.b64encode(os.urandom(16)).decode()
    return f"amq.rabbitmq.reply-to.{base64.b64encode(pid).decode()}.{key}"


def test_poison_reply_to_names_neither_stop_the_service_nor_reach_other_queues(service, broker, dead_letters):
    pid = service.process.pid
    victim = broker.queue_declare(f"victim.{uuid.uuid4().hex[:8]}", exclusive=True).method.queue
    poison = [
        "amq.rabbitmq.reply-to.AAAA.BBBB",  # malformed: the broker would close the connection
        forged_direct_reply_to(b"reply@123"),  # well formed, on a node the broker does not know
        service.env["REQUEST_QUEUE"],  # the service's own request queue
        "serve_ex.dead",  # the dead-letter queue
        victim,  # another client's queue
        "x" * 300,  # longer than an AMQP short string
    ]
    poison_ids = set()
    with Client(queue=service.env["REQUEST_QUEUE"]) as client:
        for round_ in range(2):
            before = innocent_requests(client)
            for reply_to in poison:
                cid = f"poison-{round_}-{len(poison_ids)}"
                poison_ids.add(cid)
                props = pika.BasicProperties(reply_to=reply_to[:255], correlation_id=cid, delivery_mode=2)
                body = {"v": 1, "model": "vae", "op": "generate", "n": 256, "seed": 1}
                broker.basic_publish("", service.env["REQUEST_QUEUE"], json.dumps(body).encode(), props)
            assert_all_answered(client, before + innocent_requests(client))
    # every poison request settles as a dead letter; wait for all of them, not a while
    dead, deadline = [], time.monotonic() + 30
    while {cid for cid, _ in dead} < poison_ids and time.monotonic() < deadline:
        dead += dead_letters()
        broker.connection.sleep(0.02)
    assert service.process.poll() is None and service.process.pid == pid
    assert service.health()["ready"] is True
    assert broker.basic_get(victim, auto_ack=True)[0] is None, "a reply reached another client's queue"
    # the only dead letters are the poison requests themselves: no reply was ever
    # published into the request queue (it would come back without a reply_to)
    assert {cid for cid, _ in dead} == poison_ids
    assert all("model" in body for _, body in dead)


@pytest.mark.parametrize(
    "bad, code",
    [
        (
            '{"v":1,"model":"vae","op":"decode","z":[[1'
            + "0" * 320
            + ",0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]]}",
            "too_large",
        ),
        (
            '{"v":1,"model":"vae","op":"decode","z":[[1e39,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]]}',
            "invalid_argument",
        ),
        (
            '{"v":1,"model":"gpt","op":"generate_text","prompt":"A","max_new_tokens":3,"top_k":18446744073709551616}',
            "too_large",
        ),
        (
            '{"v":1,"model":"gpt","op":"generate_text","prompt":"A","max_new_tokens":3,"temperature":1e-39}',
            "invalid_argument",
        ),
        ('{"v":1,"model":"vae","op":"generate","n":1,"n":2}', "malformed_request"),
        ('{"v":1,"model":"vae","op":"generate","n":1,"seed":"\xff"}', "malformed_request"),
        ('{"v":1,"model":"vae","op":"decode","z":' + "[" * 5000 + "]" * 5000 + "}", "malformed_request"),
        ('{"v":1,"model":"vae\\n","op":"generate","n":1}', "unknown_model"),
    ],
    ids=[
        "huge_integer",
        "beyond_float32",
        "top_k_2_64",
        "tiny_temperature",
        "duplicate_key",
        "invalid_utf8",
        "deep_nesting",
        "id_newline",
    ],
)
def test_a_bad_request_fails_alone_among_innocents(service, bad, code):
    with Client(queue=service.env["REQUEST_QUEUE"]) as client:
        before = innocent_requests(client)
        text = [
            client.send({"v": 1, "model": "gpt", "op": "generate_text", "prompt": "A", "max_new_tokens": 3})
        ]
        bad_id = client.send(bad.encode("latin-1"))
        after = innocent_requests(client)
        reply = client.wait(bad_id)
        assert reply["ok"] is False and reply["error"]["code"] == code, reply
        assert len(reply["error"]["message"]) <= 300
        assert_all_answered(client, before + after)
        assert client.wait(text[0])["ok"] is True


def test_huge_numbers_cost_their_sender_alone(service):
    """A 300,000-digit number would cost seconds to parse as a bignum (the square of its
    digits) and hold a processor meanwhile; it is refused by a linear scan instead. An
    innocent request sent right behind two of them is answered within 0.5 s (3.3 s
    when they were parsed)."""
    huge = '{"v":1,"model":"vae","op":"generate","n":' + "9" * 300_000 + "}"
    with Client(queue=service.env["REQUEST_QUEUE"]) as client:
        client.call({"v": 1, "model": "vae", "op": "generate", "n": 1, "seed": 0})  # warm
        huge_ids = [client.send(huge.encode()) for _ in range(2)]
        sent = time.monotonic()
        innocent = client.send({"v": 1, "model": "vae", "op": "generate", "n": 1, "seed": 1})
        assert tensor(client.wait(innocent)).shape == (1, 784)
        waited = time.monotonic() - sent
        for cid in huge_ids:
            reply = client.wait(cid)
            assert reply["error"]["code"] == "too_large" and "999" not in reply["error"]["message"]
    assert waited < 0.5, f"an innocent request waited {waited:.2f} s behind two huge numbers"


def test_unknown_fields_are_named_cut_short_and_escaped(service):
    """A 100,000-character field name is named by its first 24 characters; a name with a
    quote and a newline is escaped; past three names, the rest are counted."""
    with Client(queue=service.env["REQUEST_QUEUE"]) as client:
        long = client.call({"v": 1, "model": "vae", "op": "generate", "n": 1, "A" * 100_000: 1})
        odd = client.call({"v": 1, "model": "vae", "op": "generate", "n": 1, 'a"b\nc': 1})
        many = client.call(
            {"v": 1, "model": "vae", "op": "generate", "n": 1, **{f"x{i}": 1 for i in range(5)}}
        )
    message = long["error"]["message"]
    assert long["error"]["code"] == "malformed_request" and len(message) <= 300
    assert message.startswith(f'unexpected field "{"A" * 24}"... for op generate; allowed: v, model, op, n')
    assert odd["error"]["message"].startswith('unexpected field "a\\"b\\nc" for op generate')
    assert many["error"]["message"].startswith('unexpected field "x0", "x1", "x2" and 2 more for op generate')


LARGEST_TEXT = {"v": 1, "model": "gpt", "op": "generate_text", "prompt": "A" * 1024, "max_new_tokens": 1024}


def test_the_largest_requests_do_not_hold_up_short_ones(service):
    """Three of the largest allowed GPT requests, then short ones: the short text joins
    the GPT's decoding batch beside the long ones, the VAE request goes to its batcher,
    and both are answered before the long ones."""
    with Client(queue=service.env["REQUEST_QUEUE"]) as client:
        long_ids = [client.send(LARGEST_TEXT) for _ in range(3)]
        client.poll(0.05)  # the long texts have started
        short = client.send(
            {"v": 1, "model": "gpt", "op": "generate_text", "prompt": "A", "max_new_tokens": 1}
        )
        small = client.send({"v": 1, "model": "vae", "op": "generate", "n": 1, "seed": 1})
        assert client.wait(short)["ok"] is True and tensor(client.wait(small)).shape == (1, 784)
        assert not any(cid in client.replies for cid in long_ids), "a short request waited for the long ones"
        for cid in long_ids:
            assert client.wait(cid, timeout=300)["ok"] is True


def hang_up_after_first_frame(port: int, body: dict) -> None:
    """POST a streamed generation over a raw socket, read until its first frame has come
    (the handler waits mid-generation), then close the connection without reading on."""
    data = json.dumps({**body, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as raw:
        raw.sendall(
            f"POST /v1/models/gpt/generate_text HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n".encode()
            + data
        )
        seen = b""
        while b"event: chunk" not in seen:
            got = raw.recv(4096)
            assert got, f"the connection closed before a first frame: {seen[:200]!r}"
            seen += got


def largest_http_text() -> dict:
    return {k: v for k, v in LARGEST_TEXT.items() if k not in ("model", "op")}


def test_hung_up_generations_leave_the_batch(service):
    """Four of the largest generations whose HTTP clients hang up mid-stream: each
    leaves the decoding batch between two steps (the scheduler monitors the handler
    that waits for it), so a 100-token request right after them takes well under a
    second (it waited 7.8 s when the hung-up generations ran to their end)."""
    for _ in range(4):
        hang_up_after_first_frame(service.port, largest_http_text())
    started = time.monotonic()
    status, reply = http_call(
        f"http://127.0.0.1:{service.port}", "gpt", "generate_text", {"prompt": "A", "max_new_tokens": 100}
    )
    waited = time.monotonic() - started
    assert status == 200 and reply["ok"] is True
    assert waited < 1.0, f"a 100-token request waited {waited:.2f} s behind hung-up generations"


def test_sigterm_after_hang_ups_drains_at_once(trained, tmp_path):
    """HTTP requests are counted in flight by monitor: clients that hung up are counted
    out when cowboy kills their handlers, so a SIGTERM right after does not wait for
    DRAIN_TIMEOUT_MS (10 s here); the node exits 0 within 3 s."""
    queue = f"serve_ex.hangup.{uuid.uuid4().hex[:8]}"
    node = Service(trained["gpt"].parent, queue, tmp_path / "hangup.log", DRAIN_TIMEOUT_MS="10000")
    with node:
        hang_up_after_first_frame(node.port, largest_http_text())
        status, seconds = node.sigterm(timeout=30)
    assert status == 0 and seconds < 3.0, (status, seconds)
    drained = re.search(r"drained in (\d+) ms", (tmp_path / "hangup.log").read_text())
    assert drained and int(drained[1]) < 1000, drained


def test_health_answers_while_inference_is_at_its_connection_cap(trained, tmp_path):
    """Clients that each send part of a body fill the inference listener's connections
    (HTTP_MAX_CONNECTIONS, 8 here; ranch's cap is soft, each of its 10 acceptors may
    start one connection past it, so 40 slow clients fill it): a further inference
    request waits, while /livez and /readyz, on the health listener, still answer at
    once; once the slow clients go, the waiting request is served."""
    queue = f"serve_ex.cap.{uuid.uuid4().hex[:8]}"
    node = Service(trained["vae"].parent, queue, tmp_path / "cap.log", HTTP_MAX_CONNECTIONS="8")
    partial = (
        b"POST /v1/models/vae/generate HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        b"content-type: application/json\r\ncontent-length: 100\r\n\r\n{"
    )
    with node:
        slow = [socket.create_connection(("127.0.0.1", node.port), timeout=30) for _ in range(40)]
        for s in slow:
            s.sendall(partial)
        waiting = socket.create_connection(("127.0.0.1", node.port), timeout=30)
        body = b'{"n": 1, "seed": 1}'
        waiting.sendall(
            b"POST /v1/models/vae/generate HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        started = time.monotonic()
        assert node.health()["ready"] is True
        assert urllib.request.urlopen(f"http://127.0.0.1:{node.health_port}/livez", timeout=5).status == 200
        answered_in = time.monotonic() - started
        waiting.settimeout(0.2)
        with pytest.raises(TimeoutError):
            waiting.recv(1)  # not served while the slow clients hold on
        for s in slow:
            s.close()
        waiting.settimeout(30)
        reply = b""
        while chunk := waiting.recv(65536):
            reply += chunk
        waiting.close()
    assert answered_in < 1.0, f"health took {answered_in:.2f} s with inference at its cap"
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]


def test_with_user_ids_required_a_forged_reply_to_gets_nothing_published(trained, tmp_path):
    """Two broker users (`serve_ex/scripts/broker_users.sh`), a node with
    AMQP_REQUIRE_USER_ID=true. Bob learns Alice's reply queue name and sets it as his
    requests' reply_to: they are dead-lettered without a publish, and Alice's queue gets
    only her own replies. A request without user_id is dead-lettered too; Bob cannot
    claim to be Alice (the broker refuses the publish); and his requests to his own
    queue are answered."""
    alice, bob = f"alice_{uuid.uuid4().hex[:6]}", f"bob_{uuid.uuid4().hex[:6]}"
    script = Path(__file__).resolve().parents[2] / "serve_ex/scripts/broker_users.sh"
    subprocess.run([script, alice, bob], check=True, capture_output=True)
    queue = f"serve_ex.owned.{uuid.uuid4().hex[:8]}"
    request = {"v": 1, "model": "vae", "op": "generate", "n": 1, "seed": 1}
    try:
        node = Service(trained["vae"].parent, queue, tmp_path / "owned.log", AMQP_REQUIRE_USER_ID="true")
        with node, Client(f"amqp://{alice}:{alice}@127.0.0.1:5672/%2F", queue, user_id=alice) as victim:
            assert victim.reply_queue.startswith(f"serve_ex.reply.{alice}.")
            assert victim.call(request)["ok"] is True
            params = pika.URLParameters(f"amqp://{bob}:{bob}@127.0.0.1:5672/%2F")
            with pika.BlockingConnection(params) as connection:
                channel = connection.channel()
                channel.confirm_delivery()
                own = channel.queue_declare(f"serve_ex.reply.{bob}.q", exclusive=True).method.queue
                forged = [
                    pika.BasicProperties(reply_to=victim.reply_queue, correlation_id="f1", user_id=bob),
                    pika.BasicProperties(reply_to=victim.reply_queue, correlation_id="f2"),
                    pika.BasicProperties(reply_to=own, correlation_id="f3"),  # no user_id
                ]
                for props in forged:
                    channel.basic_publish("", queue, json.dumps(request).encode(), props, mandatory=True)
                channel.basic_publish(
                    "", queue, json.dumps(request).encode(),
                    pika.BasicProperties(reply_to=own, correlation_id="b1", user_id=bob), mandatory=True,
                )  # fmt: skip
                deadline, answered = time.monotonic() + 10, None
                while answered is None and time.monotonic() < deadline:
                    _, props, body = channel.basic_get(own, auto_ack=True)
                    answered = props.correlation_id if props else None
                    connection.sleep(0.05)
                assert answered == "b1"
                with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="user_id"):
                    channel.basic_publish(
                        "", queue, b"{}", pika.BasicProperties(reply_to=victim.reply_queue, user_id=alice)
                    )
            victim.poll(1.0)
            assert len(victim.replies) == 1 and not {"f1", "f2", "f3"} & set(victim.replies)
            assert 'serve_ex_requests_total{model="unknown",outcome="dead_lettered"} 3\n' in node.metrics()
    finally:
        for user in (alice, bob):
            subprocess.run(["rabbitmqctl", "-q", "delete_user", user], capture_output=True)


def raw_exchange(port: int, data: bytes) -> bytes:
    """What the listener answers to `data` within a second (until it closes or goes quiet)."""
    with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
        raw.sendall(data)
        got = b""
        try:
            while chunk := raw.recv(4096):
                got += chunk
        except TimeoutError:
            pass
    return got


def test_an_h2c_upgrade_is_refused(service):
    """The listeners take no `Upgrade: h2c` (cowboy's `protocols: [:http]`): the request
    gets 400, not 101 Switching Protocols. (A client that opens with the HTTP/2 preface
    is still served by the cowboy RabbitMQ's package ships; docs/service.md says so.)"""
    upgrade = raw_exchange(
        service.health_port,
        b"GET /livez HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: Upgrade, HTTP2-Settings\r\n"
        b"upgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    assert upgrade.startswith(b"HTTP/1.1 400"), upgrade[:80]
