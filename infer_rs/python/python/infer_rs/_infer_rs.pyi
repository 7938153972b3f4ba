from os import PathLike
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt

class InferError(Exception):
    """A model file or an argument was refused; the message says what was wrong."""

class Model:
    """A model loaded once from an exported .safetensors, for repeated calls."""

    def __init__(self, path: str | PathLike[str]) -> None: ...
    @property
    def arch(self) -> str: ...
    @property
    def config(self) -> dict[str, Any]: ...
    def generate(self, n: int, seed: int | None = None) -> npt.NDArray[np.float32]: ...
    def decode(self, z: npt.ArrayLike) -> npt.NDArray[np.float32]: ...
    def encode(self, x: npt.ArrayLike) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...
    def reconstruct(self, x: npt.ArrayLike) -> npt.NDArray[np.float32]: ...
    def logits(self, prompt: str) -> npt.NDArray[np.float32]: ...
    def generate_text(
        self,
        prompt: str,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> str: ...
    def generate_texts(
        self,
        prompts: list[str],
        max_new_tokens: int | list[int],
        temperature: float = 0.0,
        top_k: int | None = None,
        seeds: list[int] | None = None,
    ) -> list[str]:
        """Many texts at once, generated together in one decoding batch; each equals
        `generate_text` for the same prompt, sampling and seed, whatever the others.
        `max_new_tokens` is one int for all or one per prompt; `seeds` one per prompt
        (fresh random ones when None). Releases the GIL."""
    def decoding_batch(
        self,
        max_sequences: int | None = None,
        max_cached_tokens: int | None = None,
        prefill_chunk: int | None = None,
    ) -> DecodingBatch:
        """An empty decoding batch of this GPT, for callers that stream."""

class DecodingBatch:
    """Sequences of one GPT decoded together, a token per step for each. Each
    sequence's text is the one `generate_text` gives for its prompt, sampling and seed,
    whatever joins or leaves beside it."""

    def join(
        self,
        prompt: str,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> int:
        """Add a sequence; returns its id. InferError as generate_text, or when full."""
    def step(self) -> list[tuple[int, str, bool]]:
        """One token per live, prefilled sequence: (id, character, finished)."""
    def leave(self, id: int) -> str:
        """Cancel a live sequence at once; returns its text so far."""
    def __len__(self) -> int: ...

def vae_generate(path: str | PathLike[str], n: int, seed: int | None = None) -> npt.NDArray[np.float32]: ...

class _CpuInfo(TypedDict):
    model_name: str
    vendor: str
    isa: str
    supported_isas: list[str]
    threads: int

def cpu_info() -> _CpuInfo:
    """The machine the engine runs on: CPU model name and vendor, the instruction-set
    path in use (INFER_RS_ISA forces one), the paths this CPU supports, and the threads
    per engine call (RAYON_NUM_THREADS, else one per core). Raises InferError if
    INFER_RS_ISA names a path this CPU cannot run."""
