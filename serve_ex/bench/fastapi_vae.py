"""A FastAPI + uvicorn serving peer, the HTTP benchmark's baseline: serve_ex's
`POST /v1/models/{id}/generate` for the VAE, run with torch eager one request at a time
per worker, answered with the same JSON reply (`torch_consumer.generate_reply`).

    MODEL=artifacts/vae.safetensors PYTHONPATH=. .venv/bin/uvicorn --app-dir serve_ex/bench \\
        fastapi_vae:app --workers 2 --port 8000
"""

from __future__ import annotations

import os

import torch
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from torch_consumer import generate_reply

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
    return generate_reply(MODEL, request.n, request.seed)
