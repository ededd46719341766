"""The CLI: one-line errors instead of tracebacks, and `ember complete` streaming real text."""

from __future__ import annotations

import re
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


def drafted(stderr: str) -> tuple[int, int, int]:
    """(generated, proposed, accepted) from the `--stats` line."""
    m = re.search(r"(\d+) generated, (\d+) draft tokens proposed, (\d+) accepted", stderr)
    assert m, stderr
    return int(m[1]), int(m[2]), int(m[3])


def test_complete_honours_the_speculative_settings() -> None:
    """Prompt lookup on a repeating prompt: off, no drafts; on, drafts whose length follows
    --num-draft-tokens; the greedy text is the same every time."""
    prompt = "red green blue, red green blue, red green blue, red green blue, red green blue,"
    base = ["complete", prompt, "--max-tokens", "24", "--stats"]
    plain = run(*base)
    one = run(*base, "--speculative-ngram", "--num-draft-tokens", "1")
    eight = run(*base, "--speculative-ngram", "--num-draft-tokens", "8")
    for r in (plain, one, eight):
        assert r.returncode == 0, r.stderr
    assert one.stdout == plain.stdout == eight.stdout
    assert drafted(plain.stderr) == (24, 0, 0)
    n1, d1, a1 = drafted(one.stderr)
    n8, d8, a8 = drafted(eight.stderr)
    assert n1 == n8 == 24 and a1 > 0 and a8 > 0
    # Each verify step proposes at most 2k+1 tokens (k after a miss): with k=1 at most 3 a step.
    assert d1 <= 3 * 24
    assert d8 > d1
