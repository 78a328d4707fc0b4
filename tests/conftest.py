"""Shared test setup: the pack root goes on sys.path so `import motionclone` works without installing."""

from __future__ import annotations

import os
import sys

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if PACK_ROOT not in sys.path:
    sys.path.append(PACK_ROOT)  # appended, never ahead of ComfyUI: our `nodes/` must not shadow ComfyUI's `nodes`
