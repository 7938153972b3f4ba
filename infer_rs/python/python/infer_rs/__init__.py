"""Fast CPU inference for the models `train/` exports (a Rust engine on Candle)."""

from infer_rs._infer_rs import InferError, Model, vae_generate

__all__ = ["InferError", "Model", "vae_generate"]
