"""Benchmark: cloning the motion of clips longer than one context window, through the real nodes.

Runs a real ComfyUI in-process with the bundled toy model on a toy-world clip of any length (a red circle
going right for half the clip, then back, `motionclone.toyworld.ping_pong_frames`) re-drawn as "a blue
square": motion fidelity over the whole clip, 8-frame segments, each window and each overlap, and time.
With `--memory`: the bytes autograd keeps for backward and the time of a guided run on the integration
tier's tiny model, 16 to 64 frames. What is run and measured: `tests/integration/long_video_runs.py`.

Usage: COMFYUI_PATH=~/.cache/motionclone-ci/comfyui-v0.8.0 python bench/long_video.py [--frames 40,48,64]
       [--length 16 --overlap 4] [--seeds 1]    (fidelity table)
       ... python bench/long_video.py --memory [--length 16 --overlap 4]    (kept bytes and time vs 16 frames)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

import torch

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(PACK_ROOT, "tests", "integration"))
sys.path.append(PACK_ROOT)  # appended: the pack's nodes/ must not shadow ComfyUI's nodes module

from long_video_runs import ROWS, SEGMENT, memory_table, run  # noqa: E402
from toy_fidelity_runs import start  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", default="40,48,64", help="comma-separated clip lengths")
    parser.add_argument("--length", type=int, default=16)
    parser.add_argument("--overlap", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--segment", type=int, default=SEGMENT, help="frames per segment of the segment-averaged score")
    parser.add_argument("--window-free", action="store_true",
                        help="also clone window-free where the module allows (<= 32)")
    parser.add_argument("--json", help="also write the per-run results here")
    parser.add_argument("--memory", action="store_true", help="only the memory table (tiny model: kept bytes, time)")
    options = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        comfy = start(workdir)
        if options.memory:
            rows = memory_table(comfy, options.length, options.overlap)
            base = next(r for r in rows if r["frames"] == 16)
            print("\n| frames | mode | kept for backward (MiB) | vs 16 frames | s per run | s per frame |\n"
                  "|---|---|---|---|---|---|")
            for r in rows:
                print(f"| {r['frames']} | {r['mode']} | {r['kept_bytes'] / 2**20:.2f} | "
                      f"{r['kept_bytes'] / base['kept_bytes']:.2f} | "
                      f"{r['seconds']:.1f} | {r['seconds'] / r['frames']:.2f} |")
            return
        for frames in (int(f) for f in options.frames.split(",")):
            seeds = range(1, options.seeds + 1)
            results += run(comfy, frames, options.length, options.overlap, seeds, segment=options.segment)
            if options.window_free and frames <= 32:
                results += run(comfy, frames, None, options.overlap, seeds, segment=options.segment)
    print(f"\n| frames | windows | method | whole clip | {options.segment}-frame segments | per window (min..max) | "
          "per overlap (mean; min..max) | s / clip | s / frame |")
    print("|---|---|---|---|---|---|---|---|---|")
    for frames, length in sorted({(r["frames"], r["length"] or 0) for r in results}):
        for row in ROWS:
            mine = [r for r in results if r["frames"] == frames and (r["length"] or 0) == length and r["row"] == row]
            if not mine:
                continue
            layout = f"{length}/{options.overlap}" if length else "none"
            windows = [s for r in mine for s in r["windows"]]
            overlaps = [s for r in mine for s in r["overlaps"]] or [float("nan")]
            seconds = statistics.mean(r["seconds"] for r in mine)
            print(f"| {frames} | {layout} | {row} | {statistics.mean(r['whole'] for r in mine):.2f} | "
                  f"{statistics.mean(r['segments'] for r in mine):.2f} | {min(windows):.2f}..{max(windows):.2f} | "
                  f"{statistics.mean(overlaps):.2f}; {min(overlaps):.2f}..{max(overlaps):.2f} | {seconds:.1f} | "
                  f"{seconds / frames:.2f} |")
    if options.json:
        with open(options.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
