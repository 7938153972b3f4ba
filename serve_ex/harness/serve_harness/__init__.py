"""The serve_ex test harness: a node run as a child process (`service`), a checked VAE
load (`load`), and the kill-and-recover and two-node runs built on them, each also a
command (`python -m serve_harness.kill_and_recover`, `python -m serve_harness.two_nodes`).

Used by `make demo`, the end-to-end tests and the service benchmarks. It runs the
service from the checkout it is installed from (editable, by `make venv`).
"""

from pathlib import Path

SERVE_EX = Path(__file__).resolve().parents[2]
"""The serve_ex/ folder (the Mix project) this package sits in."""
REPO = SERVE_EX.parent

if not (SERVE_EX / "mix.exs").is_file():
    raise ImportError(
        f"serve_harness runs the service from its checkout, and {SERVE_EX} holds none: "
        "install it editable (pip install -e serve_ex/harness)"
    )
