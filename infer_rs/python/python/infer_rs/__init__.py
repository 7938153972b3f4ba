"""Fast CPU inference for the models `train/` exports (a Rust engine on Candle)."""

from infer_rs._infer_rs import DecodingBatch, InferError, Model, cpu_info, vae_generate

__all__ = ["DecodingBatch", "InferError", "Model", "cpu_info", "vae_generate"]
