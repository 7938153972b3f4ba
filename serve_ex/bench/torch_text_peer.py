"""The text benchmark's Python peer: the simplest fair server a torch user would write.

One process. A stdlib `ThreadingHTTPServer` takes `POST /v1/completions` (`model`,
`prompt`, `max_tokens`, `temperature`, `top_k`, `seed`, `stream`) and queues each
request. One batching thread takes every request waiting when it is free (static
batching, up to 64 with the same prompt length and sampling), runs torch eager
`GPT.generate` with its KV cache over the whole batch until the longest is done, and
hands each request its tokens as they come, so a stream sends each token at once. A
request that arrives while a batch runs waits for the next one.

    python serve_ex/bench/torch_text_peer.py --models DIR --port 8000 [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

from train.export import load

MAX_BATCH = 64


class Pending:
    """One request: its arguments, and the queue its new text (then None) goes to."""

    def __init__(self, body: dict) -> None:
        self.model = body["model"]
        self.prompt = body["prompt"]
        self.max_tokens = int(body.get("max_tokens", 16))
        self.sampling = (float(body.get("temperature", 1.0)), body.get("top_k"))
        self.seed = int(body.get("seed", 0))
        self.out: queue.Queue[str | None] = queue.Queue()


def batching(models: dict, waiting: queue.Queue) -> None:
    """Forever: the oldest waiting request and every other one that can share its batch."""
    while True:
        batch = [waiting.get()]
        held = []
        while len(batch) < MAX_BATCH:
            try:
                other = waiting.get_nowait()
            except queue.Empty:
                break
            fits = (len(other.prompt), other.sampling) == (len(batch[0].prompt), batch[0].sampling)
            (batch if fits else held).append(other)
        for other in held:
            waiting.put(other)
        run(models[batch[0].model], batch)


def run(model, batch: list[Pending]) -> None:
    temperature, top_k = batch[0].sampling
    idx = torch.stack([model.encode(p.prompt) for p in batch])
    generator = torch.Generator().manual_seed(batch[0].seed)
    step = [0]

    def on_token(ids: torch.Tensor) -> None:
        for pending, token in zip(batch, ids[:, 0].tolist(), strict=False):
            if step[0] < pending.max_tokens:
                pending.out.put(model.decode([token]))
        step[0] += 1

    with torch.inference_mode():
        model.generate(
            idx, max(p.max_tokens for p in batch), temperature, top_k, generator, on_token=on_token
        )
    for pending in batch:
        pending.out.put(None)


def handler(models: dict, waiting: queue.Queue) -> type[BaseHTTPRequestHandler]:
    class Completions(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            pending = Pending(body)
            waiting.put(pending)
            if body.get("stream"):
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()
                while (text := pending.out.get()) is not None:
                    chunk = {"choices": [{"text": text, "index": 0, "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                self.close_connection = True
            else:
                text = "".join(iter(pending.out.get, None))
                reply = json.dumps({"choices": [{"text": text, "index": 0, "finish_reason": "length"}]})
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply.encode())

    return Completions


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, required=True, help="a directory of GPT .safetensors")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    models = {
        path.stem: load(path).eval() for path in args.models.glob("*.safetensors") if "gpt" in path.stem
    }
    waiting: queue.Queue = queue.Queue()
    threading.Thread(target=batching, args=(models, waiting), daemon=True).start()
    ThreadingHTTPServer.request_queue_size = 256  # the listen backlog: 64 clients connect at once
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler(models, waiting))
    server.daemon_threads = True
    print(f"torch peer on 127.0.0.1:{args.port} at {time.strftime('%X')}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
