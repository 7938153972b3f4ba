"""What every service benchmark states and where it writes: the machine (from infer_rs,
the one place that reads the CPU), and a markdown report under runs/bench/."""

from __future__ import annotations

import os
from pathlib import Path

import infer_rs


def machine() -> str:
    """e.g. "AMD EPYC (AuthenticAMD), 2 cores"."""
    cpu = infer_rs.cpu_info()
    return f"{cpu['model_name']} ({cpu['vendor']}), {os.cpu_count()} cores"


def write(name: str, lines: list[str]) -> None:
    """runs/bench/NAME.md, and the same on stdout."""
    text = "\n".join(lines) + "\n"
    Path("runs/bench").mkdir(parents=True, exist_ok=True)
    Path(f"runs/bench/{name}.md").write_text(text)
    print("\n" + text)
