"""A plain Python serving peer, the benchmark's baseline: a pika consumer that runs the
same VAE requests with torch, one at a time, and replies like serve_ex does.

    python serve_ex/bench/torch_consumer.py QUEUE artifacts/vae.safetensors
"""

from __future__ import annotations

import base64
import json
import sys

import pika
import torch

from train.export import load


def generate_reply(model, n: int, seed: int) -> dict:
    """n samples of `model` from `seed`, as serve_ex's JSON tensor reply (the baselines' work)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        images = model.sample(n, generator).numpy()
    return {
        "v": 1,
        "ok": True,
        "shape": list(images.shape),
        "dtype": "f32",
        "data": base64.b64encode(images.astype("<f4").tobytes()).decode(),
    }


def main() -> None:
    queue, model_path = sys.argv[1], sys.argv[2]
    torch.set_num_threads(2)
    model = load(model_path)
    connection = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2F"))
    channel = connection.channel()
    arguments = {"x-queue-type": "quorum", "x-delivery-limit": 5, "x-dead-letter-exchange": "serve_ex.dlx"}
    channel.queue_declare(queue, durable=True, arguments=arguments)
    channel.basic_qos(prefetch_count=64)

    def on_request(ch, method, props, body):
        request = json.loads(body)
        reply = generate_reply(model, request["n"], request.get("seed", 0))
        ch.basic_publish(
            "", props.reply_to, json.dumps(reply), pika.BasicProperties(correlation_id=props.correlation_id)
        )
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(queue, on_request)
    print(f"torch consumer ready on {queue}", flush=True)
    channel.start_consuming()


if __name__ == "__main__":
    main()
