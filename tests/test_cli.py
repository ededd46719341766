"""The CLI: one-line errors instead of tracebacks, and `ember complete` streaming real text."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ember", *args], capture_output=True, text=True, timeout=300)


def test_missing_model_is_one_line_error(tmp_path) -> None:
    r = run("complete", "hi", "--model", str(tmp_path / "nope.gguf"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("ember: error:")


def test_unreadable_model_is_one_line_error(tmp_path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    r = run("complete", "hi", "--model", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_complete_streams_text() -> None:
    r = run("complete", "The capital of France is", "--max-tokens", "8")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
