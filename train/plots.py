"""PNG plots: loss curves for every run, sample grids and VAE reconstructions."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SIDE = 28


def loss_curves(history: list[dict], path: Path, title: str) -> Path:
    """Training metrics against steps, held-out loss as markers on the same axes."""
    train = [r for r in history if r["kind"] == "train"]
    val = [r for r in history if r["kind"] == "val"]
    first = (train or val)[0]
    keys = [k for k in ("loss", "recon", "kl", "wasserstein", "gp", "g_loss") if k in first]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=False):
        ax.plot([r["step"] for r in train], [r[key] for r in train], lw=1, label=f"train {key}")
        if val and key in val[0]:
            ax.plot([r["step"] for r in val], [r[key] for r in val], "o-", ms=3, label=f"held-out {key}")
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def tile(images: np.ndarray, columns: int) -> np.ndarray:
    """(N, 784) in [0, 1] -> one (rows*28, columns*28) mosaic, blank cells left black."""
    n = len(images)
    rows = -(-n // columns)
    canvas = np.zeros((rows * SIDE, columns * SIDE), dtype=np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        canvas[r * SIDE : (r + 1) * SIDE, c * SIDE : (c + 1) * SIDE] = img.reshape(SIDE, SIDE)
    return canvas


def image_grid(images: np.ndarray, path: Path, title: str, columns: int = 10) -> Path:
    fig = plt.figure(figsize=(columns * 0.6, -(-len(images) // columns) * 0.6 + 0.5))
    plt.imshow(tile(np.clip(images, 0, 1), columns), cmap="gray", vmin=0, vmax=1)
    plt.axis("off")
    plt.title(title, fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def reconstructions(x: np.ndarray, x_hat: np.ndarray, path: Path, title: str) -> Path:
    """Originals on odd rows, their reconstructions right below."""
    columns = 10
    pairs = []
    for start in range(0, len(x), columns):
        pairs.extend([x[start : start + columns], x_hat[start : start + columns]])
    return image_grid(np.concatenate(pairs), path, title, columns)


def fid_curves(runs: dict[str, list[dict]], floor: float, path: Path, title: str) -> Path:
    """FID against training seconds for each run (its "fid" records), on a log scale,
    with the floor (the FID of real digits) as a dashed line."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, history in runs.items():
        points = [r for r in history if r["kind"] == "fid"]
        ax.plot([r["seconds"] for r in points], [r["fid"] for r in points], "o-", ms=3, label=name)
    ax.axhline(floor, color="gray", ls="--", lw=1, label=f"real digits (floor) {floor:.2f}")
    ax.set_yscale("log")
    ax.set_xlabel("training seconds")
    ax.set_ylabel("FID (lower is better)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
