"""File modes for what ember keeps on disk: the store's database and customer files are the owner's alone.

Explicit modes, not a process umask: the umask is process-wide state that the rest of the process (and
a test process hosting several servers) would inherit. Invariants once `ember serve` or an operator
command has opened a data directory: the SQLite database, its -wal / -shm files, and every file under
`datasets/` are 0600; `datasets/` and every directory under it 0700. Files found with wider modes (made by
an older ember) are narrowed at start. The data directory itself is only created 0700, never chmodded:
an operator may point ember at a directory that holds other things.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("ember")

FILE_MODE = 0o600
DIR_MODE = 0o700
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def private_dir(path: Path) -> None:
    """`path` exists, and no one but its owner has any access (created 0700, or narrowed)."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    narrow(path)


def create_private(path: Path) -> None:
    """`path` exists and is 0600. SQLite gives the -wal and -shm files the mode of the database file, so
    creating the (empty) database file 0600 before SQLite opens it covers them too."""
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, FILE_MODE))
    narrow(path)


def narrow(path: Path) -> None:
    """Take group and other permissions off an existing file or directory (a no-op when already private)."""
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        return
    if mode & 0o077:
        try:
            os.chmod(path, mode & 0o700)
        except PermissionError:  # another user's file: ember can still use it, so say so and go on
            log.warning("%s is mode %o and not ours to narrow; it should be readable by its owner only",
                        path, mode)


def secure_sqlite(db_path: Path) -> None:
    """The database file 0600 (made so if new), and the side files SQLite already has beside it."""
    create_private(db_path)
    for suffix in SQLITE_SIDE_FILES:
        narrow(db_path.with_name(db_path.name + suffix))


def narrow_tree(root: Path) -> None:
    """Every directory under `root` (itself included) 0700 and every file 0600, for files an older ember
    wrote with the process umask."""
    if not root.is_dir():
        return
    narrow(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            narrow(Path(dirpath) / name)
        for name in filenames:
            narrow(Path(dirpath) / name)
