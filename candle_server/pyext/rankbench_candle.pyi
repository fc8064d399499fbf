"""The Candle RankNet of candle_server, called from Python through PyO3 (see src/lib.rs)."""
from os import PathLike
from pathlib import Path

import numpy as np
import numpy.typing as npt

INPUT_FEATURES: int
WEIGHTS_FILE: str
__version__: str

class RankNet:
    """RankNet(path): `path` is ranknet.safetensors or a directory holding it.

    Raises FileNotFoundError when the weights are missing, ValueError when they are not this model.
    """

    def __init__(self, path: str | PathLike[str]) -> None: ...
    @property
    def path(self) -> Path: ...
    def infer(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """(N, 40) C-contiguous float32 -> (N,) float32 scores; the GIL is released meanwhile.

        TypeError: not a numpy array, or dtype not native float32.
        ValueError: shape not (N, 40), or not C-contiguous and aligned.
        """
    def time_scores(self, x: npt.NDArray[np.float32], iterations: int) -> float:
        """Mean thread-CPU ns of the Rust scoring call alone (benchmarking aid)."""

def compute_threads() -> int:
    """Candle's compute thread count in this process (1 after import)."""

def keep_freed_memory() -> bool:
    """glibc malloc keeps freed blocks (32 MiB thresholds), as the Rust server sets at start.
    Process-wide; False where the allocator is not glibc's."""

def runtime_threads() -> dict[str, int | str]:
    """What governs the forward pass's threads, read now on the calling thread: the dict the Rust
    server reports as `runtime_threads` in /stats. Keys: candle_get_num_threads,
    rayon_current_num_threads, gemm_threading_threshold (int); RAYON_NUM_THREADS,
    CANDLE_NUM_THREADS (str, "unset" when absent); os_threads (int, Linux only)."""

def build_info() -> dict[str, str | bool]:
    """{"profile", "opt_level", "debug_assertions", "version"} of this build."""
