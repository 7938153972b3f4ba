"""Export to `.safetensors` with the config in the metadata, and load it back.

Metadata keys (all strings, as safetensors requires):
  arch            "vae" | "wgan" | "gpt"
  schema_version  the shared_schema version the file obeys
  config          the model config as JSON (the GPT's vocabulary included)
  provenance      JSON: data source, epochs, seed, final metrics, versions
Every tensor goes out as fp32 on the CPU, whatever the training device and precision.
Which tensors go out is each model's `export_state()`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from train.errors import TrainError
from train.models import ARCHITECTURES

SCHEMA_VERSION = 1


def exported_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's own selection (`export_state`), as fp32 CPU tensors."""
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.export_state().items()}


def config_json(model: torch.nn.Module) -> str:
    return json.dumps(asdict(model.cfg), sort_keys=True)


def export(model: torch.nn.Module, path: Path, provenance: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "arch": model.arch,
        "schema_version": str(SCHEMA_VERSION),
        "config": config_json(model),
        "provenance": json.dumps(provenance, sort_keys=True),
    }
    save_file(exported_tensors(model), str(path), metadata=metadata)
    return path


def read_metadata(path: Path) -> dict:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise TrainError(f"{path} is not a readable safetensors file: {err}") from err
    for key in ("arch", "schema_version", "config"):
        if key not in meta:
            raise TrainError(f"{path} has no '{key}' metadata; was it exported by `python -m train`?")
    return meta


def config_from_json(arch: str, text: str):
    if arch not in ARCHITECTURES:
        raise TrainError(f"unknown architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}")
    fields = json.loads(text).items()
    # JSON has no tuples: give the frozen dataclass back the tuples it was built with
    return ARCHITECTURES[arch].Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields})


def load(path: Path) -> torch.nn.Module:
    """Rebuild the model a file was exported from, weights loaded, in eval mode."""
    meta = read_metadata(path)
    cfg = config_from_json(meta["arch"], meta["config"])
    model = ARCHITECTURES[meta["arch"]](cfg)
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    expected = exported_tensors(model)
    if set(tensors) != set(expected):
        raise TrainError(
            f"{path} tensors differ from a {meta['arch']} model: "
            f"missing {sorted(set(expected) - set(tensors))}, extra {sorted(set(tensors) - set(expected))}"
        )
    model.load_state_dict(tensors, strict=False)
    return model.eval()
