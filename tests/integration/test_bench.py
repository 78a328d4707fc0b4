"""The benchmark script runs and prints its ratios (its numbers are reported, never asserted)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from comfy_harness import PACK_ROOT


def test_bench_prints_time_and_memory_ratios(comfyui):
    env = {**os.environ, "COMFYUI_PATH": comfyui.root, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, os.path.join(PACK_ROOT, "bench", "guided_step.py"), "--sizes", "2x64,4x64"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for mode in ("balanced", "low"):  # every mode samples fast's latent, at both sizes
        assert len(re.findall(rf"^\| \dx64² \| {mode} \|.*\| yes \|$", result.stdout, re.MULTILINE)) == 2, result.stdout
    assert re.search(r"^\| low \| \d+\.\d\d \| 2x64²: \d\.\d{3} \|", result.stdout, re.MULTILINE), result.stdout
    assert re.search(r"time ratio guided / plain: \d+\.\d\d", result.stdout), result.stdout
    assert re.search(r"kept for backward per guided step: \d+\.\d MiB; per plain step: 0\.0 MiB", result.stdout), result.stdout
