"""The service part of `make demo`: start serve_ex on the trained models, send real
requests through RabbitMQ with the Python client, show the replies, stop it.
"""

from __future__ import annotations

import argparse
import tempfile
import uuid
from pathlib import Path

from serve_client import Client, save_grid, tensor, text
from serve_harness.service import Service


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=Path("artifacts"))
    args = p.parse_args()
    queue = f"serve_ex.demo.{uuid.uuid4().hex[:6]}"
    log = Path(tempfile.gettempdir()) / f"{queue}.log"
    print(f"\nstarting serve_ex on {args.models}/ (log: {log})")
    with Service(args.models.resolve(), queue, log) as service, Client(queue=queue) as client:
        print(f"ready: {service.health()}")
        vae = tensor(client.call({"v": 1, "model": "vae", "op": "generate", "n": 20, "seed": 42}))
        wgan = (tensor(client.call({"v": 1, "model": "wgan", "op": "generate", "n": 20, "seed": 42})) + 1) / 2
        import numpy as np

        grid = save_grid(np.concatenate([vae, wgan]), Path("runs/served_samples.png"))
        print(f"served 20 VAE + 20 WGAN digits over RabbitMQ: {grid}")
        request = {
            "v": 1,
            "model": "gpt",
            "op": "generate_text",
            "prompt": "ROMEO:",
            "max_new_tokens": 160,
            "temperature": 0.8,
            "top_k": 20,
            "seed": 1,
        }
        print(f"served GPT text:\n{text(client.call(request))}\n")
        bad = client.call({"v": 1, "model": "vae", "op": "generate", "n": 100000})
        print(f"a bad request gets an error reply: {bad}")
        counts = [
            line for line in service.metrics().splitlines() if line.startswith("serve_ex_requests_total")
        ]
        print("metrics:\n  " + "\n  ".join(counts))


if __name__ == "__main__":
    main()
