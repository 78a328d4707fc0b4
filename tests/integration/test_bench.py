"""The benchmark script runs and prints its ratios (its numbers are reported, never asserted)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from comfy_harness import PACK_ROOT


def test_bench_prints_time_and_memory_ratios(comfyui):
    env = {**os.environ, "COMFYUI_PATH": comfyui.root, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, os.path.join(PACK_ROOT, "bench", "guided_step.py"), "--sizes", "2x64,4x64"],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for mode in ("balanced", "low"):  # every mode samples fast's latent, at both sizes
        assert len(re.findall(rf"^\| \dx64² \| {mode} \|.*\| yes \|$", result.stdout, re.MULTILINE)) == 2, result.stdout
    assert re.search(r"^\| low \| \d+\.\d\d \| 2x64²: \d\.\d{3} \|", result.stdout, re.MULTILINE), result.stdout
    assert re.search(r"time ratio guided / plain: \d+\.\d\d", result.stdout), result.stdout
    assert re.search(r"kept for backward per guided step: \d+\.\d MiB; per plain step: 0\.0 MiB",
                     result.stdout), result.stdout


def test_gpu_check_dry_run_samples_every_mode_with_dynamic_vram_on_and_off(comfyui):
    """bench/gpu_check.py --cpu: the GPU script's whole path on the CPU, so that it cannot rot before a GPU runs it."""
    import comfy.cli_args

    env = {**os.environ, "COMFYUI_PATH": comfyui.root, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, os.path.join(PACK_ROOT, "bench", "gpu_check.py"), "--cpu"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    dynamic_flags = ("on", "off") if hasattr(comfy.cli_args.args, "disable_dynamic_vram") else ("off",)
    for model in ("toy, 4x64²", "SD1.5 + v3, 2x64²"):
        for flag in dynamic_flags:
            for mode in ("fast", "balanced", "low"):  # guided on the classic patcher: a CPU has no dynamic one
                row = (rf"^\| {re.escape(model)} \| {flag} \| {mode} \| ok \| classic \| "
                       rf"\d+\.\d{{3}} \| \d+\.\d{{3}} \| — \|")
                assert re.search(row, result.stdout, re.MULTILINE), (row, result.stdout)
            assert re.search(rf"^\| {re.escape(model)} \| {flag} \| plain KSampler \| ok \|", result.stdout,
                             re.MULTILINE)
    if "on" in dynamic_flags:  # same weights, same kernels: the same latents
        assert len(re.findall(r"\| 0\.0e\+00 \(within 0\.01\) \|$", result.stdout, re.MULTILINE)) == 8, result.stdout
