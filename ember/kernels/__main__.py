"""`python -m ember.kernels`: build (or find) the native kernels now, so that the server starts fast."""

from __future__ import annotations

import logging
import sys

from ember import kernels

logging.basicConfig(level=logging.INFO, format="%(message)s")
module = kernels.load()
print(f"native kernels: {module.__file__ if module else 'unavailable, the torch path will be used'}")
sys.exit(0)
