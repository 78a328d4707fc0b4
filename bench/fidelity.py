"""Benchmark: how much of a reference clip's motion ends up in the new video, through the real nodes.

Runs a real ComfyUI in-process (the integration harness) with the bundled toy model on toy-world reference
clips re-drawn with a new prompt, for several seeds, and prints one row per method (unguided, MotionClone
Sampler, fidelity mode, Guidance + KSampler with three samplers, gradient reuse). What each row runs and
each column measures: `tests/integration/toy_fidelity_runs.py`.

Usage: COMFYUI_PATH=~/.cache/motionclone-ci/comfyui-v0.8.0 python bench/fidelity.py [--quick] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(PACK_ROOT, "tests", "integration"))
sys.path.append(PACK_ROOT)  # appended: the pack's nodes/ must not shadow ComfyUI's nodes module

from toy_fidelity_runs import GUIDED_STEPS, ROWS, STEPS, cases, run, start, table  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one clip, one seed, unguided and MotionClone Sampler")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of: " + ", ".join(ROWS))
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--guided-steps", type=int, default=GUIDED_STEPS)
    parser.add_argument("--json", help="also write the per-run results here")
    parser.add_argument("--memory-mode", choices=("auto", "fast", "balanced", "low"), default=None,
                        help="memory_mode of the guided nodes (default: the nodes' default, auto)")
    options = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    rows = ROWS[:2] if options.quick else tuple(r.strip() for r in options.rows.split(","))
    seeds = [1] if options.quick else list(range(1, options.seeds + 1))
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        comfy = start(workdir)
        results = run(comfy, rows, cases(options.quick), seeds, options.steps, options.guided_steps,
                      memory_mode=options.memory_mode)
    print()
    print(table(results, rows))
    print(f"\n{len(results)} clips, {time.perf_counter() - began:.0f} s in all; ComfyUI {comfy.version}")
    if options.json:
        with open(options.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
