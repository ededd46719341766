"""The batch input reader on arbitrary bytes: rows or a 400 naming a line, never anything else."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ember.errors import InvalidRequest, ResourceNotFound
from ember.store.dataset_files import DatasetFiles, read_rows, safe_filename, scan_batch_file

LINE = st.one_of(
    st.binary(max_size=60),
    st.builds(lambda c, b: json.dumps({"custom_id": c, "body": b}).encode(),
              st.text(max_size=8), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3)),
    st.sampled_from([b"", b"\r", b"\xef\xbb\xbf", b"{}", b"null", b'{"custom_id": "x", "body": []}']),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(LINE, max_size=8), st.sampled_from([b"\n", b"\r\n"]))
def test_any_bytes_give_rows_or_a_400(lines: list[bytes], eol: bytes) -> None:
    data = eol.join(lines)
    try:
        rows = list(read_rows(io.BytesIO(data), "f.jsonl"))
    except InvalidRequest as e:
        assert e.message.startswith("f.jsonl:")
        return
    for r in rows:
        assert isinstance(r.custom_id, str) and r.custom_id and isinstance(r.body, dict)


def test_scan_counts_and_refuses_repeats(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'{"custom_id": "a", "body": {"prompt": "x"}}\n\n{"custom_id": "b", "body": {}}\n')
    scan = scan_batch_file(p, "a.jsonl", lambda bs: 2 * len(bs))
    assert (scan.rows, scan.tokens) == (2, 4)
    p.write_bytes(b'{"custom_id": "a", "body": {}}\n{"custom_id": "a", "body": {}}\n')
    with pytest.raises(InvalidRequest, match="a.jsonl:2: custom_id 'a' is repeated"):
        scan_batch_file(p, "a.jsonl", lambda b: 0)


def test_client_file_names_never_become_paths() -> None:
    for name, want in [("../../etc/passwd", "passwd"), ("C:\\x\\y.jsonl", "y.jsonl"), ("..", "data.jsonl"),
                       ("", "data.jsonl"), (None, "data.jsonl"), ("a b$c.jsonl", "a_b_c.jsonl"),
                       (".hidden", "hidden"), ("x" * 300, "x" * 100)]:
        assert safe_filename(name) == want
    files = DatasetFiles(tempfile.mkdtemp())
    for bad in ("../x", "a/b", ".part-1", ""):
        with pytest.raises(ResourceNotFound):
            files.path_of("acme", "ds", bad)
    with pytest.raises(InvalidRequest):
        files.dir_of("acme", "../../etc")
