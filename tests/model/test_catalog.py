"""Model names: the default, its short name and full id, and paths (the embedded file keeps its id)."""

from __future__ import annotations

import pytest

from ember.errors import ModelLoadError
from ember.model.catalog import MODEL_ID_PREFIX, resolve_model

ID = MODEL_ID_PREFIX + "smollm2-135m-instruct"


def test_names_and_paths(tmp_path) -> None:
    default = resolve_model(None)
    assert default.model_id == ID and default.path.suffix == ".gguf"
    assert resolve_model("smollm2-135m-instruct").path == default.path
    assert resolve_model(ID).path == default.path
    assert resolve_model(str(default.path)).model_id == ID
    other = tmp_path / "My-Model.gguf"
    other.write_bytes(b"GGUF")
    ref = resolve_model(str(other))
    assert ref.model_id == MODEL_ID_PREFIX + "my-model" and ref.aliases == ("my-model",)
    with pytest.raises(ModelLoadError, match="unknown model"):
        resolve_model("no-such-model")
