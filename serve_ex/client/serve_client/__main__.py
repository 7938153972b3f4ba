"""`python -m serve_client` (or `serve-client`): send one request to the service, show the reply.

python -m serve_client generate --model vae -n 16 --seed 42 --out runs/served.png
python -m serve_client text --model gpt --prompt "ROMEO:" --max-new-tokens 200
python -m serve_client stream --prompt "ROMEO:" --max-new-tokens 400 --temperature 0.8
python -m serve_client raw '{"v": 1, "model": "vae", "op": "generate", "n": 1}'
python -m serve_client http gpt generate_text '{"prompt": "ROMEO:", "max_new_tokens": 40}'
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from serve_client import DEFAULT_QUEUE, DEFAULT_URL, Client, ServeError, http_call, save_grid, tensor, text
from serve_client.amqp import DROPPED

DEFAULT_HTTP = "http://127.0.0.1:9090"
TENSOR_FIELDS = ("data", "mu", "logvar")


class WithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help with its default, where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None else super()._get_help_string(action)


def text_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="gpt", help="a served GPT's id")
    parser.add_argument("--prompt", default="ROMEO:", help="the text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="characters to generate")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy; otherwise at least 0.01")
    parser.add_argument("--top-k", type=int, help="sample from the k likeliest (default: all)")
    parser.add_argument("--seed", type=int, help="same seed, same text (default: a fresh one)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m serve_client", description=__doc__.split("\n\n")[0], formatter_class=WithDefaults
    )
    p.add_argument("--url", default=DEFAULT_URL, help="the broker")
    p.add_argument("--queue", default=DEFAULT_QUEUE, help="the service's request queue")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the reply")
    p.add_argument(
        "--user-id",
        help="the broker user of --url, for a service with AMQP_REQUIRE_USER_ID=true: requests "
        "carry it and replies come to a queue of that user's own",
    )
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser(
        "generate", help="images from a VAE or WGAN, saved as a PNG grid", formatter_class=WithDefaults
    )
    g.add_argument("--model", default="vae", help="a served VAE's or WGAN's id")
    g.add_argument("-n", type=int, default=16, help="how many images")
    g.add_argument("--seed", type=int, help="same seed, same images (default: a fresh one)")
    g.add_argument("--out", type=Path, default=Path("runs/served.png"), help="the PNG written")
    g.add_argument("--encoding", choices=["base64", "f32"], default="f32", help="the reply's tensor encoding")
    text_options(
        sub.add_parser("text", help="text from a GPT, printed when it ends", formatter_class=WithDefaults)
    )
    text_options(
        sub.add_parser("stream", help="text from a GPT, printed as it comes", formatter_class=WithDefaults)
    )
    r = sub.add_parser("raw", help="send a JSON body as given and print the reply")
    r.add_argument("body", help="a whole request, as JSON")
    h = sub.add_parser(
        "http", help="send a request over HTTP and print the reply", formatter_class=WithDefaults
    )
    h.add_argument("model", help="the model's id")
    h.add_argument("op", help="generate, decode, encode or generate_text")
    h.add_argument("body", help="the request as JSON, without model and op")
    h.add_argument("--base", default=DEFAULT_HTTP, help="the service's HTTP endpoint")
    return p.parse_args(argv)


def text_request(args: argparse.Namespace, stream: bool) -> dict:
    request = {
        "v": 1,
        "model": args.model,
        "op": "generate_text",
        "prompt": args.prompt,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "stream": stream,
    }
    for key in ("top_k", "seed"):
        if getattr(args, key) is not None:
            request[key] = getattr(args, key)
    return request


def over_http(args: argparse.Namespace) -> int:
    """The reply as JSON, a tensor's values shown by their shape; 1 on an error reply."""
    try:
        status, reply = http_call(args.base, args.model, args.op, args.body.encode(), args.timeout)
    except OSError as err:
        print(
            f"error: cannot reach {args.base}: {err}; is the service running (make serve)?", file=sys.stderr
        )
        return 2
    if "shape" in reply:  # a tensor reply: its values (base64 or raw) shown by their shape
        rows, cols = reply["shape"]
        reply = {k: f"<{rows} x {cols} float32>" if k in TENSOR_FIELDS else v for k, v in reply.items()}
    print(json.dumps(reply))
    return 0 if status == 200 else 1


def over_amqp(args: argparse.Namespace) -> int:
    with Client(args.url, args.queue, user_id=args.user_id) as client:
        if client.consumers() == 0:
            raise ServeError(
                "unavailable", f"no service consumes {args.queue} on {args.url}; start one (make serve)"
            )
        if args.command == "generate":
            request = {"v": 1, "model": args.model, "op": "generate", "n": args.n, "encoding": args.encoding}
            if args.seed is not None:
                request["seed"] = args.seed
            images = tensor(client.call(request, args.timeout))
            if images.min() < 0:  # a GAN's tanh pixels
                images = (images + 1) / 2
            print(f"{images.shape[0]} images from '{args.model}': {save_grid(images, args.out)}")
        elif args.command == "text":
            print(text(client.call(text_request(args, stream=False), args.timeout)))
        elif args.command == "stream":
            print(args.prompt, end="", flush=True)
            for piece in client.stream_text(text_request(args, stream=True), args.timeout):
                print(piece, end="", flush=True)
            print()
        else:
            reply = client.call(args.body.encode(), args.timeout)
            print(json.dumps(reply))
            if not reply.get("ok"):
                return 1  # the reply says what was wrong
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "http":
        return over_http(args)
    try:
        return over_amqp(args)
    except ServeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except DROPPED as err:
        print(f"error: cannot reach the broker at {args.url}: {err!r}; is RabbitMQ running?", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
