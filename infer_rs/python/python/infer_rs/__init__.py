"""Fast CPU inference for the models `train/` exports (a Rust engine on Candle)."""

from infer_rs._infer_rs import InferError, Model, cpu_info, vae_generate

__all__ = ["InferError", "Model", "cpu_info", "vae_generate"]
