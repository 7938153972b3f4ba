"""A FastAPI + uvicorn serving peer, the HTTP benchmark's baseline: serve_ex's
`POST /v1/models/{id}/generate` for the VAE, run with torch eager one request at a time
per worker, answered with the same JSON reply.

    MODEL=artifacts/vae.safetensors PYTHONPATH=. .venv/bin/uvicorn --app-dir serve_ex/bench \\
        fastapi_vae:app --workers 2 --port 8000
"""

from __future__ import annotations

import base64
import os

import torch
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from train.export import load

torch.set_num_threads(1)  # one per worker: the workers share the cores
MODEL = load(os.environ["MODEL"])
app = FastAPI()


class Generate(BaseModel):
    v: int = 1
    n: int = Field(ge=1, le=256)
    seed: int = 0


@app.post("/v1/models/{model_id}/generate")
def generate(model_id: str, request: Generate) -> dict:
    if model_id != "vae":
        raise HTTPException(404, f"no model {model_id!r} is served")
    generator = torch.Generator().manual_seed(request.seed)
    with torch.inference_mode():
        images = MODEL.sample(request.n, generator).numpy()
    return {
        "v": 1,
        "ok": True,
        "shape": list(images.shape),
        "dtype": "f32",
        "data": base64.b64encode(images.astype("<f4").tobytes()).decode(),
    }
