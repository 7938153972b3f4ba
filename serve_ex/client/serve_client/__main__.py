"""`python -m serve_client` (or `serve-client`): send one request to the service, show the reply.

python -m serve_client generate --model vae -n 16 --seed 42 --out runs/served.png
python -m serve_client text --model gpt --prompt "ROMEO:" --max-new-tokens 200
python -m serve_client raw '{"v": 1, "model": "vae", "op": "generate", "n": 1}'
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from serve_client import DEFAULT_QUEUE, DEFAULT_URL, Client, ServeError, save_grid, tensor, text
from serve_client.amqp import DROPPED


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serve_client", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=DEFAULT_URL)
    p.add_argument("--queue", default=DEFAULT_QUEUE)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument(
        "--user-id",
        help="the broker user of --url, for a service with AMQP_REQUIRE_USER_ID=true: requests "
        "carry it and replies come to a queue of that user's own",
    )
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="images from a VAE or WGAN model, saved as a PNG grid")
    g.add_argument("--model", default="vae")
    g.add_argument("-n", type=int, default=16)
    g.add_argument("--seed", type=int)
    g.add_argument("--out", type=Path, default=Path("runs/served.png"))
    g.add_argument("--encoding", choices=["base64", "f32"], default="f32", help="the reply's tensor encoding")
    t = sub.add_parser("text", help="text from a GPT model, printed")
    t.add_argument("--model", default="gpt")
    t.add_argument("--prompt", default="ROMEO:")
    t.add_argument("--max-new-tokens", type=int, default=200)
    t.add_argument("--temperature", type=float, default=0.0)
    t.add_argument("--top-k", type=int)
    t.add_argument("--seed", type=int)
    r = sub.add_parser("raw", help="send a JSON body as given and print the reply")
    r.add_argument("body")
    args = p.parse_args(argv)
    try:
        with Client(args.url, args.queue, user_id=args.user_id) as client:
            if args.command == "generate":
                request = {"v": 1, "model": args.model, "op": "generate", "n": args.n}
                request["encoding"] = args.encoding
                if args.seed is not None:
                    request["seed"] = args.seed
                images = tensor(client.call(request, args.timeout))
                if images.min() < 0:  # a GAN's tanh pixels
                    images = (images + 1) / 2
                print(f"{images.shape[0]} images from '{args.model}': {save_grid(images, args.out)}")
            elif args.command == "text":
                request = {
                    "v": 1,
                    "model": args.model,
                    "op": "generate_text",
                    "prompt": args.prompt,
                    "max_new_tokens": args.max_new_tokens,
                    "temperature": args.temperature,
                }
                for key in ("top_k", "seed"):
                    if getattr(args, key) is not None:
                        request[key] = getattr(args, key)
                print(text(client.call(request, args.timeout)))
            else:
                reply = client.call(args.body.encode(), args.timeout)
                print(json.dumps(reply))
                if not reply.get("ok"):
                    return 1  # the reply says what was wrong
    except ServeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except DROPPED as err:
        print(f"error: cannot reach the broker at {args.url}: {err!r}; is RabbitMQ running?", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
