"""Dataset files on local disk: where they live, how they are written (atomically), how they are read.

Layout: {data_dir}/datasets/{account}/{dataset}/{filename}. Account and dataset ids are checked ids and
file names are ember's own or sanitized, so no client string ever becomes a path as it came. A file is
written under a temporary name in the same directory, fsynced, renamed, and the directory fsynced: a
crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ember.errors import InvalidRequest, ResourceNotFound
from ember.json_depth import TOO_DEEP, depth_exceeds
from ember.store.ids import check_id
from ember.store.private_files import FILE_MODE, narrow_tree, private_dir

RESULTS_FILE = "BIJOutputSet.jsonl"
ERRORS_FILE = "error-data"
MAX_CUSTOM_ID = 512
MAX_LINE_BYTES = 16 * 1024 * 1024
"""A longer line is refused at upload (its row could never fit a context window anyway)."""
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str | None, default: str = "data.jsonl") -> str:
    """A client's file name reduced to a plain base name of safe characters (never a path)."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = _SAFE.sub("_", base).strip("._")[:100]
    return base or default


class DatasetFiles:
    """Customer data: every directory here is 0700 and every file 0600 (ember.store.private_files)."""

    def __init__(self, data_dir: str) -> None:
        self.root = Path(data_dir) / "datasets"

    def secure(self) -> None:
        """Make the tree private, narrowing what an older ember wrote with the process umask (at start)."""
        private_dir(self.root)
        narrow_tree(self.root)

    def dir_of(self, account_id: str, dataset_id: str) -> Path:
        return self.root / check_id(account_id, "account_id") / check_id(dataset_id, "datasetId")

    def path_of(self, account_id: str, dataset_id: str, filename: str) -> Path:
        if not filename or safe_filename(filename, "") != filename:
            raise ResourceNotFound("no such file")
        return self.dir_of(account_id, dataset_id) / filename

    def open_temp(self, account_id: str, dataset_id: str) -> tuple[BinaryIO, Path]:
        """A new temporary file in the dataset's directory (same file system, so the rename is atomic)."""
        d = self.dir_of(account_id, dataset_id)
        # One level at a time: mkdir(parents=True) would make the parents with the umask's mode.
        for level in (self.root, d.parent, d):
            private_dir(level)
        tmp = d / f".part-{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
        return os.fdopen(fd, "wb"), tmp

    def commit(self, f: BinaryIO, tmp: Path, final: Path) -> None:
        """fsync the file, rename it into place, fsync the directory (the rename itself is durable)."""
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, final)
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_lines(self, account_id: str, dataset_id: str, filename: str, lines: Iterable[str]) -> int:
        """Write a whole file atomically; returns its size in bytes."""
        f, tmp = self.open_temp(account_id, dataset_id)
        n = 0
        try:
            for line in lines:
                b = line.encode("utf-8") + b"\n"
                f.write(b)
                n += len(b)
            self.commit(f, tmp, self.path_of(account_id, dataset_id, filename))
        except BaseException:
            f.close()
            tmp.unlink(missing_ok=True)
            raise
        return n

    def remove(self, account_id: str, dataset_id: str) -> None:
        shutil.rmtree(self.dir_of(account_id, dataset_id), ignore_errors=True)


@dataclass(frozen=True)
class Row:
    line_no: int
    custom_id: str
    body: dict
    method: str | None = None
    """OpenAI batch lines name the method and url of each request (Fireworks lines do not)."""
    url: str | None = None


@dataclass(frozen=True)
class ScanResult:
    rows: int
    tokens: int


def _decode(raw: bytes, line_no: int, where: str) -> str | None:
    """One physical line as text: CRLF and a leading UTF-8 BOM tolerated; None for a blank line."""
    if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    raw = raw.rstrip(b"\r\n")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{where}:{line_no}: not UTF-8 text", param="file") from None
    return text if text.strip() else None


def _is_text(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_rows(f: BinaryIO, where: str) -> Iterator[Row]:
    """The rows of a batch input file, structurally checked: each non-blank line one JSON object with a
    string `custom_id` and an object `body`. Raises InvalidRequest naming `where` and the line."""
    line_no = 0
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        line_no += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise InvalidRequest(f"{where}:{line_no}: the line is longer than {MAX_LINE_BYTES} bytes",
                                 param="file")
        text = _decode(raw, line_no, where)
        if text is None:
            continue
        try:
            obj = json.loads(text)
        except RecursionError:
            raise InvalidRequest(f"{where}:{line_no}: {TOO_DEEP}", param="file") from None
        except ValueError:
            raise InvalidRequest(f"{where}:{line_no}: not a JSON object", param="file") from None
        if depth_exceeds(obj):
            raise InvalidRequest(f"{where}:{line_no}: {TOO_DEEP}", param="file")
        if not isinstance(obj, dict):
            raise InvalidRequest(f"{where}:{line_no}: not a JSON object", param="file")
        cid = obj.get("custom_id")
        if not isinstance(cid, str) or not cid or len(cid) > MAX_CUSTOM_ID:
            raise InvalidRequest(f"{where}:{line_no}: custom_id must be a non-empty string of at most "
                                 f"{MAX_CUSTOM_ID} characters", param="file")
        if not _is_text(cid):
            raise InvalidRequest(f"{where}:{line_no}: custom_id holds a lone UTF-16 surrogate; it must be "
                                 "valid Unicode", param="file")
        body = obj.get("body")
        if not isinstance(body, dict):
            raise InvalidRequest(f"{where}:{line_no}: body must be a JSON object", param="file")
        method, url = obj.get("method"), obj.get("url")
        yield Row(line_no, cid, body, method if isinstance(method, str) else None,
                  url if isinstance(url, str) else None)


def scan_batch_file(path: Path, where: str, count_tokens: Callable[[list[dict]], int],
                    chunk: int = 512) -> ScanResult:
    """Check a whole uploaded file: structure, unique custom_ids, at least one row; count rows and tokens
    (bodies go to `count_tokens` in chunks, so a tokenizer can work on many at once)."""
    seen: set[str] = set()
    tokens = 0
    bodies: list[dict] = []
    with open(path, "rb") as f:
        for row in read_rows(f, where):
            if row.custom_id in seen:
                raise InvalidRequest(f"{where}:{row.line_no}: custom_id {row.custom_id[:80]!r} is repeated",
                                     param="file")
            seen.add(row.custom_id)
            bodies.append(row.body)
            if len(bodies) >= chunk:
                tokens += count_tokens(bodies)
                bodies = []
    if not seen:
        raise InvalidRequest(f"{where}: the file holds no rows (one JSON object per line)", param="file")
    return ScanResult(len(seen), tokens + (count_tokens(bodies) if bodies else 0))
