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
