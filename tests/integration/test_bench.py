"""The benchmark script runs and prints its ratios (its numbers are reported, never asserted)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from comfy_harness import PACK_ROOT


def test_bench_prints_time_and_memory_ratios(comfyui):
    env = {**os.environ, "COMFYUI_PATH": comfyui.root, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, os.path.join(PACK_ROOT, "bench", "guided_step.py")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"time ratio guided / plain: \d+\.\d\d", result.stdout), result.stdout
    assert re.search(r"kept for backward per guided step: \d+\.\d MiB; per plain step: 0\.0 MiB", result.stdout), result.stdout
