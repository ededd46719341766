"""read_checkpoint: a path -> the Checkpoint its format's reader makes (a GGUF file, or a Hugging Face
model directory)."""

from __future__ import annotations

from pathlib import Path

from ember.errors import ModelLoadError
from ember.model.checkpoint import Checkpoint
from ember.model.gguf import read_gguf
from ember.model.gguf_file import MAGIC as GGUF_MAGIC
from ember.model.hf import read_hf_dir


def is_gguf(path: Path) -> bool:
    if path.suffix.lower() == ".gguf":
        return True
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def read_checkpoint(path: str | Path) -> Checkpoint:
    """A GGUF file, or a Hugging Face model directory (or a file inside one)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model path not found: {path}")
    if path.is_file() and is_gguf(path):
        return read_gguf(path)
    # Pointing at a checkpoint's own config or weights means its directory.
    folder = path if path.is_dir() else path.parent if _is_hf_file(path) else None
    if folder is not None and (folder / "config.json").is_file():
        return read_hf_dir(folder)
    raise ModelLoadError(f"not a GGUF file or a Hugging Face model directory (no config.json): {path}")


def _is_hf_file(path: Path) -> bool:
    return path.name == "config.json" or ".safetensors" in path.name
