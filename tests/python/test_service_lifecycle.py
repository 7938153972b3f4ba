"""The service's lifecycle against the real broker: `make serve` as the README gives it,
a drain on SIGTERM under load beside a second node, and a node with no model.

Needs the broker on 127.0.0.1:5672, Elixir and the NIF (`make test` provides them).
"""

import hashlib
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pika
import pytest
import torch
from serve_client import Client, tensor
from serve_client.replies import FrameOrder
from serve_harness.service import Service, free_port, http_json
from serve_harness.two_nodes import DRAIN_TIMEOUT_S, stop_one_under_load

import infer_rs
from train.export import export, load

REPO = Path(__file__).resolve().parents[2]


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def foreground_node(model_dir: Path, name: str) -> tuple[str, int, dict]:
    """A queue of its own, a health port, and the environment of a node started in the
    foreground on `model_dir` with one engine thread."""
    queue, port = f"serve_ex.{name}.{uuid.uuid4().hex[:8]}", free_port()
    env = {
        **os.environ,
        "MODEL_DIR": str(model_dir),
        "REQUEST_QUEUE": queue,
        "HTTP_PORT": str(free_port()),
        "HEALTH_PORT": str(port),
        "ENGINE_THREADS": "1",
    }
    return queue, port, env


def test_make_serve_runs_the_release_on_model_dir_and_drains_on_sigterm(trained, tmp_path):
    queue, port, env = foreground_node(trained["vae"].parent, "make")
    log = tmp_path / "make_serve.log"
    with open(log, "wb") as out:
        make = subprocess.Popen(
            ["make", "--no-print-directory", "serve"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,  # its own process group, to clean up after a failure
        )
    try:

        def exited_or_ready():
            return make.poll() is not None or http_json(port, "/readyz").get("ready")

        wait_for(exited_or_ready, 300, f"readiness; see {log}")
        assert make.poll() is None, f"make serve exited with {make.returncode}; see {log}"
        ready = http_json(port, "/readyz")
        assert ready["models"] == ["gpt", "gpt-small", "vae", "wgan"]
        # left alone, the engine takes every core
        assert ready["engine"]["threads"] == 1, "ENGINE_THREADS reached the engine"
        with Client(queue=queue) as client:
            reply = client.call({"v": 1, "model": "vae", "op": "generate", "n": 2, "seed": 1})
        assert tensor(reply).shape == (2, 784)
        # the recipe execs the release, so make's one child is the node (beam.smp)
        children = Path(f"/proc/{make.pid}/task/{make.pid}/children").read_text().split()
        assert len(children) == 1
        os.kill(int(children[0]), signal.SIGTERM)
        assert make.wait(timeout=DRAIN_TIMEOUT_S + 20) == 0, "make serve exits with the node's status"
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
    text = log.read_text()
    assert "serve_ex/_build/prod/rel/serve_ex/bin/serve_ex start" in text, "make serve ran the release"
    assert "drained in" in text


class Terminal:
    """A command run as the session leader of a new pseudo-terminal, as in a terminal
    window: Ctrl-C typed there sends SIGINT to the terminal's foreground process group."""

    def __init__(self, argv: list[str], env: dict):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: run the command, nothing else
            os.chdir(REPO)
            os.execvpe(argv[0], argv, env)
        self.output = bytearray()
        self.status = None

    def read(self) -> str:
        """What the terminal has shown so far (read without waiting)."""
        while select.select([self.fd], [], [], 0)[0]:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # the other side is closed: everything is read
                break
            if not chunk:
                break
            self.output += chunk
        return self.output.decode(errors="replace")

    def exited(self) -> bool:
        self.read()
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status is not None

    def kill_session(self) -> None:
        """SIGKILL to every process of the terminal's session (the command's children
        may sit in process groups of their own)."""
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == self.pid:  # the session id
                os.kill(int(stat.parent.name), signal.SIGKILL)
        if self.status is None:
            os.waitpid(self.pid, 0)
        os.close(self.fd)


@pytest.mark.parametrize(
    "command",
    [["make", "--no-print-directory", "serve"], ["serve_ex/_build/prod/rel/serve_ex/bin/serve_ex", "start"]],
    ids=["make serve", "the release's foreground start"],
)
def test_ctrl_c_in_a_terminal_drains_and_exits_0(trained, tmp_path, command):
    """Ctrl-C in a terminal reaches every process of the foreground group. The node
    does not open Erlang's BREAK menu: it drains as on SIGTERM, a request it holds is
    answered, and the command exits 0."""
    subprocess.run(["make", "--no-print-directory", "release"], cwd=REPO, check=True, capture_output=True)
    queue, port, env = foreground_node(trained["gpt"].parent, "ctrl_c")
    terminal = Terminal(command, env)
    try:
        wait_for(lambda: terminal.exited() or http_json(port, "/readyz").get("ready"), 300, "readiness")
        assert not terminal.exited(), terminal.read()
        with Client(queue=queue) as client:
            request = {
                "v": 1,
                "model": "gpt",
                "op": "generate_text",
                "prompt": "ROMEO:",
                "max_new_tokens": 400,
            }
            cid = client.send(request)
            time.sleep(0.3)  # delivered (loopback), and still generating
            os.write(terminal.fd, b"\x03")
            assert client.wait(cid, timeout=DRAIN_TIMEOUT_S + 10)["new_tokens"] == 400
            wait_for(terminal.exited, DRAIN_TIMEOUT_S + 20, "the exit")
    finally:
        shown = terminal.read()
        terminal.kill_session()
    assert "BREAK:" not in shown
    assert "drained in" in shown, shown[-2000:]
    assert terminal.status == 0, shown[-2000:]


def test_sigterm_under_load_drains_beside_a_second_node_and_loses_nothing(trained, tmp_path):
    counts = stop_one_under_load(
        trained["vae"].parent, tmp_path, lambda node: node.sigterm(timeout=DRAIN_TIMEOUT_S + 20)
    )
    status, seconds = counts["stopped"]
    assert counts["inflight_at_stop"] >= 64
    # the work in flight settled inside the drain: nothing had to wait for the timeout
    drained = re.search(r"drained in (\d+) ms; (\d+) deliveries requeued", (tmp_path / "a.log").read_text())
    assert drained and int(drained[2]) == 0 and int(drained[1]) < DRAIN_TIMEOUT_S * 1000, counts
    assert status == 0 and seconds < DRAIN_TIMEOUT_S, counts
    settled = (counts["lost"], counts["wrong"], counts["duplicates"], counts["reconnects"])
    assert settled == (0, 0, 0, 0), counts


def test_sigterm_with_work_beyond_the_drain_timeout_requeues_it_to_the_other_node(trained, tmp_path):
    """The largest GPT requests, all taken by one node; a drain timeout far shorter than
    they need. The node exits 0 soon after the timeout, and the other node answers every
    request with the text the engine gives alone (streams start again from the first
    frame; the client drops the repeats)."""
    drain_ms = 300
    queue = f"serve_ex.drain.{uuid.uuid4().hex[:8]}"
    models = trained["gpt"].parent
    largest = {"v": 1, "model": "gpt", "op": "generate_text", "prompt": "A" * 1024, "max_new_tokens": 1024}
    sampling = {"temperature": 0.8, "top_k": 20, "stream": True}
    requests = [{**largest, **sampling, "seed": seed} for seed in range(4)]
    with (
        Service(models, queue, tmp_path / "a.log", DRAIN_TIMEOUT_MS=str(drain_ms)) as a,
        Client(queue=queue) as client,
    ):
        ids = [client.send(request) for request in requests]

        def a_first_frame() -> bool:
            client.poll(0.01)
            return bool(client.replies)

        wait_for(a_first_frame, 60, "a first frame")  # a is generating
        with Service(models, queue, tmp_path / "b.log"):
            status, seconds = a.sigterm(timeout=30)
            deadline = time.monotonic() + 300
            while client.outstanding and time.monotonic() < deadline:
                client.poll(0.05)
    drained = re.search(r"drained in (\d+) ms; (\d+) deliveries requeued", (tmp_path / "a.log").read_text())
    assert status == 0 and drained and int(drained[2]) >= 1, (status, drained)
    assert drain_ms <= int(drained[1]) < drain_ms + 1000 and seconds < drain_ms / 1000 + 3, (drained, seconds)
    model = infer_rs.Model(trained["gpt"])
    for request, cid in zip(requests, ids, strict=True):
        order = FrameOrder()
        frames = [frame for reply in client.replies[cid] for frame in order.add(reply)]
        assert frames and frames[-1]["done"]
        want = model.generate_text(request["prompt"], 1024, temperature=0.8, top_k=20, seed=request["seed"])
        assert request["prompt"] + "".join(frame.get("delta", "") for frame in frames) == want


def test_sigkill_mid_batch_loses_no_text_and_changes_none(trained, tmp_path):
    """Sixteen texts decoding together, half of them streamed; the node is SIGKILLed once
    the first frame came. A node started after it gets every request again from the
    broker, and each reply (each stream, its repeats dropped) is the text the engine
    gives that request alone."""
    queue = f"serve_ex.kill_batch.{uuid.uuid4().hex[:8]}"
    models = trained["gpt"].parent
    requests = [
        {
            "v": 1,
            "model": "gpt",
            "op": "generate_text",
            "prompt": "ROMEO:",
            "max_new_tokens": 300,
            "temperature": 0.8,
            "top_k": 20,
            "seed": seed,
            "stream": seed % 2 == 0,
        }
        for seed in range(16)
    ]
    with Service(models, queue, tmp_path / "a.log") as a, Client(queue=queue) as client:
        ids = [client.send(request) for request in requests]

        def a_first_frame() -> bool:
            client.poll(0.01)
            return bool(client.replies)

        wait_for(a_first_frame, 60, "a first frame")
        a.sigkill()
        ended = [cid for cid in ids if any("text" in r or r.get("done") for r in client.replies.get(cid, []))]
        assert len(ended) < len(ids), "every text ended before the kill: nothing was mid-batch"
        with Service(models, queue, tmp_path / "b.log"):
            deadline = time.monotonic() + 120
            while client.outstanding and time.monotonic() < deadline:
                client.poll(0.05)
    assert client.outstanding == {}
    model = infer_rs.Model(trained["gpt"])
    for request, cid in zip(requests, ids, strict=True):
        want = model.generate_text("ROMEO:", 300, temperature=0.8, top_k=20, seed=request["seed"])
        if request["stream"]:
            order = FrameOrder()
            frames = [frame for reply in client.replies[cid] for frame in order.add(reply)]
            assert frames[-1]["done"] and frames[-1]["ok"]
            assert "ROMEO:" + "".join(frame.get("delta", "") for frame in frames) == want
        else:
            assert client.replies[cid][-1]["text"] == want


def test_sigkill_of_one_of_two_nodes_under_load_loses_nothing(trained, tmp_path):
    counts = stop_one_under_load(trained["vae"].parent, tmp_path, lambda node: node.sigkill())
    # a killed node's unacked deliveries are redelivered to the other: some may be
    # answered twice (clients de-duplicate by correlation id), none lost or wrong, and
    # the client never re-sent anything
    assert counts["inflight_at_stop"] >= 64
    assert (counts["lost"], counts["wrong"], counts["reconnects"]) == (0, 0, 0), counts


def test_a_node_without_models_stays_unready_and_takes_no_requests(trained, tmp_path):
    empty = tmp_path / "no_models"
    empty.mkdir()
    os.mkfifo(empty / "pipe.safetensors")  # read naively, a FIFO would block the start
    (empty / "notes.safetensors").write_text("not a model")
    queue = f"serve_ex.empty.{uuid.uuid4().hex[:8]}"
    idle = Service(empty, queue, tmp_path / "idle.log")
    try:
        idle.start(ready=False)
        wait_for(lambda: idle.health().get("broker_connected"), 30, "the broker")
        ready = idle.health()
        assert ready["ready"] is False and ready["models"] == [] and ready["consuming"] is False
        with Client(queue=queue) as client:
            cid = client.send({"v": 1, "model": "vae", "op": "generate", "n": 1, "seed": 3})
            client.poll(1.0)
            assert cid not in client.replies, "a node with no model answered (unknown_model)"
            with Service(trained["vae"].parent, queue, tmp_path / "healthy.log"):
                assert tensor(client.wait(cid)).shape == (1, 784)
    finally:
        idle.stop()
    log = (tmp_path / "idle.log").read_text()
    assert "pipe.safetensors: not a regular file" in log and "no model is served" in log


def test_an_instruction_set_the_cpu_lacks_stops_the_start(trained, tmp_path):
    queue = f"serve_ex.bad.{uuid.uuid4().hex[:8]}"
    node = Service(trained["vae"].parent, queue, tmp_path / "bad.log", INFER_RS_ISA="bogus")
    with pytest.raises(RuntimeError, match="serve_ex exited with 1"), node:
        pytest.fail("the node started")
    assert "INFER_RS_ISA=bogus: expected one of portable, avx2, avx512" in (tmp_path / "bad.log").read_text()


def publish(channel, queue: str, body: dict, reply_to: str, cid: str, deadline_ms=None) -> None:
    headers = {} if deadline_ms is None else {"x-deadline-ms": deadline_ms}
    props = pika.BasicProperties(reply_to=reply_to, correlation_id=cid, headers=headers, delivery_mode=2)
    channel.basic_publish("", queue, json.dumps(body).encode(), props)


def test_deadlines_and_overload_through_the_broker(trained, tmp_path):
    queue = f"serve_ex.limits.{uuid.uuid4().hex[:8]}"
    long_text = {"v": 1, "model": "gpt", "op": "generate_text", "prompt": "A", "max_new_tokens": 400}
    small = {"v": 1, "model": "vae", "op": "generate", "n": 1, "seed": 1}
    with (
        Service(trained["vae"].parent, queue, tmp_path / "limits.log", MAX_QUEUED_ROWS="3") as service,
        Client(queue=queue) as client,
    ):
        channel = client.channel
        now_ms = int(time.time() * 1000)
        publish(channel, queue, small, client.reply_queue, "late", deadline_ms=now_ms - 1)
        publish(channel, queue, small, client.reply_queue, "bad", deadline_ms="tomorrow")
        publish(channel, queue, small, client.reply_queue, "in-time", deadline_ms=now_ms + 60_000)
        assert client.wait("late")["error"]["code"] == "deadline_exceeded"
        assert client.wait("bad")["error"]["code"] == "invalid_argument"
        assert client.wait("in-time")["ok"] is True

        # flood the GPT: 3 rows are admitted, the rest are shed at once, the VAE answers
        flood = [client.send(long_text) for _ in range(12)]
        for _ in range(5):  # one at a time: within the VAE's own bound
            assert tensor(client.call(small)).shape == (1, 784)
        replies = [client.wait(cid, timeout=120) for cid in flood]
        shed = [r for r in replies if not r["ok"]]
        assert shed and all(r["error"]["code"] == "overloaded" for r in shed)
        assert all(r["error"]["retry_after_ms"] >= 1 for r in shed)
        assert sum(r["ok"] for r in replies) >= 3
        # a short deadline behind a long request expires while it waits for its batch
        longest = dict(long_text, max_new_tokens=1024)
        first = client.stream(longest, timeout=120)
        next(first)  # a first frame: its batch has started, and has 1,000 tokens to go
        publish(channel, queue, longest, client.reply_queue, "behind", int(time.time() * 1000) + 30)
        rest = list(first)
        assert rest and rest[-1]["done"]
        assert client.wait("behind", timeout=120)["error"]["code"] == "deadline_exceeded"
        metrics = service.metrics()
    assert 'outcome="overloaded"' in metrics and 'outcome="deadline_exceeded"' in metrics
    assert "serve_ex_queue_time_ms_bucket" in metrics and "serve_ex_compute_time_ms_bucket" in metrics


def model_version(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_hot_swap_under_load_loses_nothing_and_a_bad_file_keeps_the_old_version(trained, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(trained["vae"], models / "vae.safetensors")
    old = model_version(models / "vae.safetensors")
    # other weights: every parameter moved by seeded noise, so a reply tells which
    # file computed it
    retrained = load(trained["vae"])
    torch.manual_seed(1)
    with torch.no_grad():
        for p in retrained.parameters():
            p.add_(0.05 * torch.randn_like(p))
    replacement = tmp_path / "vae_retrained.safetensors"
    export(retrained, replacement, {"data": "retrained"})
    new = model_version(replacement)
    by_version = {old: infer_rs.Model(trained["vae"]), new: infer_rs.Model(replacement)}
    queue = f"serve_ex.swap.{uuid.uuid4().hex[:8]}"
    with (
        Service(models, queue, tmp_path / "swap.log", MODEL_POLL_MS="100") as service,
        Client(queue=queue) as client,
    ):
        sent, swapped_at = [], None
        deadline = time.monotonic() + 60
        while len(sent) < 600 and time.monotonic() < deadline:
            sent += [client.send({"v": 1, "model": "vae", "op": "generate", "n": 1, "seed": len(sent)})]
            if len(sent) == 200:
                os.replace(replacement, models / "vae.safetensors")  # atomic, as a deploy would
                swapped_at = time.monotonic()
            if len(sent) % 32 == 0:
                client.poll(0.02)
        # each reply is the output of the file its version header names, bit for bit
        for seed, cid in enumerate(sent):
            got = tensor(client.wait(cid))
            version = client.versions[cid][0]
            assert version in by_version, (old, new, version)
            np.testing.assert_array_equal(got, by_version[version].generate(1, seed=seed))
        log = tmp_path / "swap.log"
        wait_for(lambda: f"version {new}" in log.read_text(), 30, "the swap")
        after = client.send({"v": 1, "model": "vae", "op": "generate", "n": 1, "seed": 2})
        np.testing.assert_array_equal(tensor(client.wait(after)), by_version[new].generate(1, seed=2))
        assert client.versions[after] == [new]
        assert not np.array_equal(by_version[old].generate(1, seed=2), by_version[new].generate(1, seed=2))
        assert swapped_at is not None

        # a corrupt file in place of the model: the log says why, the new version serves on
        (tmp_path / "corrupt").write_bytes(b"\x00" * 64)
        os.replace(tmp_path / "corrupt", models / "vae.safetensors")
        wait_for(
            lambda: "the old version keeps serving" in (tmp_path / "swap.log").read_text(), 30, "a refusal"
        )
        cid = client.send({"v": 1, "model": "vae", "op": "generate", "n": 1, "seed": 1})
        np.testing.assert_array_equal(tensor(client.wait(cid)), by_version[new].generate(1, seed=1))
        assert client.versions[cid] == [new]
        assert service.health()["ready"] is True

        # new ids in the directory: the registry announces them and the pipeline gives
        # each its workers (a batcher; a text scheduler per lane), which answer them
        for name in ("wgan", "gpt"):
            shutil.copy(trained[name], models / f"{name}.safetensors")
            wait_for(lambda name=name: f"model '{name}'" in log.read_text(), 30, f"serving {name}")
        cid = client.send({"v": 1, "model": "wgan", "op": "generate", "n": 2, "seed": 5})
        np.testing.assert_array_equal(
            tensor(client.wait(cid)), infer_rs.Model(trained["wgan"]).generate(2, seed=5)
        )
        text = {"v": 1, "model": "gpt", "op": "generate_text", "prompt": "ROMEO:", "max_new_tokens": 30}
        want = infer_rs.Model(trained["gpt"]).generate_text("ROMEO:", 30, temperature=0.8, seed=2)
        assert client.call({**text, "temperature": 0.8, "seed": 2})["text"] == want


def test_a_release_whose_supervisor_gives_up_exits_non_zero(tmp_path, trained):
    """A request queue declared earlier with other arguments makes every topology
    declaration fail: the connection manager crashes until the top supervisor gives up.
    The release's application is permanent, so the VM exits non-zero and a restart
    policy can act, instead of a live but useless node."""
    queue = f"serve_ex.clash.{uuid.uuid4().hex[:8]}"
    connection = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2F"))
    try:
        connection.channel().queue_declare(queue, auto_delete=True)  # a classic queue
        env = {
            **os.environ,
            "MODEL_DIR": str(trained["vae"].parent),
            "REQUEST_QUEUE": queue,
            "HTTP_PORT": str(free_port()),
            "HEALTH_PORT": str(free_port()),
            "ERL_CRASH_DUMP": str(tmp_path / "erl_crash.dump"),  # the VM's last words, kept out of the repo
        }
        subprocess.run(["make", "--no-print-directory", "release"], cwd=REPO, check=True, capture_output=True)
        release = REPO / "serve_ex/_build/prod/rel/serve_ex/bin/serve_ex"
        log = tmp_path / "clash.log"
        with open(log, "wb") as out:
            node = subprocess.Popen([release, "start"], env=env, stdout=out, stderr=out)
        try:
            status = node.wait(timeout=120)
        finally:
            if node.poll() is None:
                node.kill()
                node.wait()
    finally:
        connection.close()
    assert status != 0
    assert "PRECONDITION_FAILED" in log.read_text()


def test_a_request_whose_consumers_keep_dying_is_dead_lettered_by_the_delivery_limit(trained, tmp_path):
    """A message that kills every consumer that takes it (as one that crashes whole nodes
    would) is not requeued forever: the request queue the service declares is a quorum
    queue with a delivery limit, and the broker dead-letters the message once it is
    spent. Consumers here die by closing their channel with the delivery unacked."""
    queue = f"serve_ex.limit.{uuid.uuid4().hex[:8]}"
    with Service(trained["vae"].parent, queue, tmp_path / "limit.log"):
        pass  # the node declared the queue, its dead-letter exchange and its limit; it is gone now
    connection = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2F"))
    try:
        watch = connection.channel()
        dead = watch.queue_declare("", exclusive=True).method.queue
        watch.queue_bind(dead, "serve_ex.dlx", routing_key=queue)
        watch.confirm_delivery()
        body = json.dumps({"v": 1, "model": "vae", "op": "generate", "n": 1, "seed": 1}).encode()
        watch.basic_publish("", queue, body, pika.BasicProperties(correlation_id="killer", delivery_mode=2))
        deliveries = 0
        for _ in range(20):  # bounded: far above any delivery limit the topology sets
            consumer = connection.channel()
            method, _props, _body = consumer.basic_get(queue, auto_ack=False)
            consumer.close()  # dies holding the delivery: the broker takes it back
            if method is None:
                break
            deliveries += 1
        dead_lettered = watch.basic_get(dead, auto_ack=True)
        connection.channel().queue_delete(queue)
    finally:
        connection.close()
    method, props, got = dead_lettered
    assert method is not None, f"not dead-lettered after {deliveries} deliveries"
    assert got == body and props.correlation_id == "killer"
    assert 1 < deliveries < 20, deliveries
    assert props.headers["x-first-death-reason"] == "delivery_limit", props.headers


@pytest.mark.parametrize(
    "setting, words",
    [
        ({"BATCH_SIZE": "zero"}, 'BATCH_SIZE must be a whole number from 1 to 4096, got "zero"'),
        (
            {"HTTP_PORT": "busy"},
            "HTTP_PORT={port}: cannot listen on 127.0.0.1:{port} (address already in use)",
        ),
    ],
    ids=["not-a-number", "port-in-use"],
)
def test_a_bad_setting_is_one_error_line_and_a_non_zero_exit(tmp_path, trained, setting, words):
    """The release started with a bad setting prints one line that names the variable,
    its value and what is allowed, exits non-zero at once, and leaves no crash dump in
    its working directory."""
    subprocess.run(["make", "--no-print-directory", "release"], cwd=REPO, check=True, capture_output=True)
    release = REPO / "serve_ex/_build/prod/rel/serve_ex/bin/serve_ex"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {
            **os.environ,
            "MODEL_DIR": str(trained["vae"].parent),
            "HTTP_PORT": str(free_port()),
            "HEALTH_PORT": str(free_port()),
            **{k: str(port) if v == "busy" else v for k, v in setting.items()},
        }
        done = subprocess.run([release, "start"], env=env, cwd=tmp_path, capture_output=True, timeout=120)
    lines = (done.stdout + done.stderr).decode().strip().splitlines()
    assert done.returncode != 0
    assert lines == [f"error: {words.format(port=port)}"]
    assert list(tmp_path.iterdir()) == []
