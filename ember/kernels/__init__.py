"""Native CPU kernels, compiled on first use with the machine's C++ compiler (torch's cpp_extension).

They are optional: when no compiler is found or the build fails, `load()` returns None once, says why in
the log, and the engine keeps its pure-torch path. Builds are kept per environment and source hash under
<venv>/ember-kernels; `make install` builds them, so a server start only loads them.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path
from types import ModuleType

log = logging.getLogger("ember.kernels")
SOURCES = sorted(Path(__file__).parent.glob("*.cpp"))
HEADERS = sorted(Path(__file__).parent.glob("*.h"))
DISABLE_ENV = "EMBER_NO_NATIVE_KERNELS"
# -fopenmp compiles at::parallel_for's pragmas but links no OpenMP runtime of its own: the GOMP symbols
# resolve to the libgomp torch already loaded, so the kernel shares torch's thread team (a second
# runtime's team would compete with it for the two cores). -ffast-math lets exp and the dot products
# vectorize; the order of every sum is still fixed by the code, whatever shares the batch. The library is
# built on the host that runs it (cached under the venv), so -march=native targets that host: generic code
# (c10's half conversions, auto-vectorized loops) uses what it has -- measured: without it, 512-token
# prefill and 32-stream decode ran 5-15% slower on an AVX-512 Xeon. The explicit AVX2 / AVX-512 paths carry
# their own target attributes and are chosen at run time (isa.h), so capping the ISA still works.
CFLAGS = ["-O3", "-march=native", "-mtune=native", "-ffast-math", "-fopenmp"]


@functools.cache
def load() -> ModuleType | None:
    """The compiled module (paged_decode_attention, add_rms_norm, rope_write_kv, silu_mul, the GGUF block
    kernels gguf_linear_int8 and friends, cpu_isas), or None where it cannot be built."""
    if os.environ.get(DISABLE_ENV):
        return None
    scripts = sysconfig.get_path("scripts")
    if shutil.which("ninja") is None and scripts and Path(scripts, "ninja").exists():
        # torch builds with ninja found on PATH; the `ninja` wheel puts it next to this interpreter.
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
    try:
        from torch.utils.cpp_extension import load as build

        log.info("loading native kernels (the first start on a machine compiles them, about 30 s)")
        # The build commands name the sources by absolute path, so two checkouts with equal sources
        # would keep rebuilding one shared folder: the folder is keyed by where the sources are too.
        text = "".join(p.read_text() for p in SOURCES + HEADERS) + " ".join(CFLAGS) + str(Path(__file__).parent)
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        # One build per environment (torch keys builds by its include paths, so two venvs sharing the
        # default ~/.cache directory would keep rebuilding each other's).
        where = Path(sys.prefix, "ember-kernels", digest)
        where.mkdir(parents=True, exist_ok=True)
        _clear_stale_lock(where / "lock")
        return build(name=f"ember_kernels_{digest}", sources=[str(p) for p in SOURCES], extra_cflags=CFLAGS,
                     build_directory=str(where), verbose=False)
    except Exception as e:  # noqa: BLE001 - any build failure means: use the torch path
        log.warning("native kernels unavailable (%s); decode attention runs on torch ops",
                    str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
        return None

STALE_LOCK_S = 900.0
"""A build holds its folder's lock for a minute or two; one older than this was left by a process killed
mid-build, and torch would wait on it forever (a server start that hangs at "loading native kernels")."""


def _clear_stale_lock(lock: Path) -> None:
    try:
        if time.time() - lock.stat().st_mtime > STALE_LOCK_S:
            log.warning("removing a stale kernel build lock left by an interrupted build: %s", lock)
            lock.unlink(missing_ok=True)
    except FileNotFoundError:
        pass
