"""Benchmark: cloning the motion of clips longer than one context window, through the real nodes.

Runs a real ComfyUI in-process (the integration harness) with the bundled toy model on a toy-world
reference clip of any length (a red circle going right for half the clip, then back, `ping_pong_frames`),
re-drawn as "a blue square", and reports per row (unguided / MotionClone Sampler, each with
'MotionClone: Context Windows' when the clip is longer than a window):

- motion fidelity (`motionclone.fidelity`, DMT's score, as bench/fidelity.py) over the whole clip, in each
  window, and in each overlap region (the seams) of the window layout;
- wall time per clip and per frame.

Usage: COMFYUI_PATH=~/.cache/motionclone-ci/comfyui-v0.8.0 python bench/long_video.py [--frames 40,48,64]
       [--length 16 --overlap 4] [--seeds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
PACK_ROOT = os.path.dirname(HERE)
if PACK_ROOT not in sys.path:
    sys.path.append(PACK_ROOT)  # appended: our nodes/ must not shadow ComfyUI's nodes module

SIZE = 128
SPEED = 4.5  # px per frame: the slow end of what the toy model was trained on (4.5-9 px/frame at 128 px)
NEW_PROMPT = "a blue square"
ROWS = ("unguided", "MotionClone Sampler")


def ping_pong_positions(frames: int, speed: float = SPEED, size: int = SIZE) -> list[float]:
    """Centre x per frame: right at `speed` px/frame for the first half of the clip, then back to the start."""
    half = frames // 2
    steps = [t if t < half else 2 * half - 1 - t for t in range(frames)]  # 0, 1, ..., h-1, h-1, ..., 0
    return [size / 2 + speed * (step - (half - 1) / 2) for step in steps]


def ping_pong_frames(frames: int, speed: float = SPEED, size: int = SIZE) -> torch.Tensor:
    """`(frames, size, size, 3)` in [0, 1]: a red circle on the toy world's dark background (`ping_pong_positions`)."""
    from bench.toyworld import ClipSpec, ShapeSpec, render_clip

    return torch.cat([render_clip(ClipSpec((ShapeSpec("circle", "red", (x, size / 2), 0.11 * size),), 1, size, size)).frames
                      for x in ping_pong_positions(frames, speed, size)])


def build_prompt(row: str, frames: int, seed: int, prefix: str, length: int | None, overlap: int = 4,
                 schedule: str = "uniform", fusion: str = "pyramid", speed: float = SPEED, steps: int | None = None,
                 guided_steps: int | None = None) -> dict:
    """bench/fidelity.py's graph of `row` on the ping-pong clip of `frames` frames, with 'MotionClone: Context
    Windows' (`length`, `overlap`, ...) after Apply AnimateDiff for every node when `length` is given."""
    from bench import fidelity

    graph = fidelity.build_prompt(row, fidelity.CASES[0].clip, NEW_PROMPT, seed, prefix,
                                  steps or fidelity.STEPS, guided_steps or fidelity.GUIDED_STEPS)
    graph["latent"]["inputs"]["batch_size"] = frames
    if "reference" in graph:
        graph["reference"] = {"class_type": "MotionCloneTestToyPingPong", "inputs": {"frames": frames, "speed": speed, "size": SIZE}}
    if length:
        for node in graph.values():
            for name, value in node["inputs"].items():
                if value == ["apply", 0]:
                    node["inputs"][name] = ["context", 0]
        graph["context"] = {"class_type": "MotionCloneContextWindows", "inputs": {
            "model": ["apply", 0], "length": length, "overlap": overlap, "schedule": schedule, "fusion": fusion}}
    return graph


def regions(frames: int, length: int | None, overlap: int, schedule: str = "uniform") -> tuple[list, list]:
    """`(windows, overlaps)` of the layout as frame tuples (one window of all frames without windows)."""
    from motionclone.windows import ContextWindows, overlap_regions

    if not length or frames <= length:
        return [tuple(range(frames))], []
    layout = ContextWindows(length, overlap, schedule).index_lists(frames)
    return layout, overlap_regions(layout)


SEGMENT, SEGMENT_STRIDE = 8, 4  # frames per segment of the segment-averaged score, and its step


def segments(frames: int) -> list[tuple[int, ...]]:
    """Overlapping 8-frame segments covering the clip (the last one ending at the last frame)."""
    starts = list(range(0, max(1, frames - SEGMENT + 1), SEGMENT_STRIDE))
    if starts[-1] + SEGMENT < frames:
        starts.append(frames - SEGMENT)
    return [tuple(range(s, min(s + SEGMENT, frames))) for s in starts]


def fidelity_by_region(reference: torch.Tensor, generated: torch.Tensor, windows: list, overlaps: list) -> dict:
    """Motion fidelity (frames in clip order) of: the whole clip at once ("whole"; tracks must survive every
    frame), the mean over overlapping 8-frame segments covering the clip ("segments"), each window, and each
    overlap region of the window layout."""
    from bench.fidelity import motion_score

    def score(frames):
        index = torch.tensor(sorted(frames))
        return motion_score(reference[index], generated[index])

    return {"whole": motion_score(reference, generated),
            "segments": statistics.mean(score(s) for s in segments(reference.shape[0])),
            "windows": [score(w) for w in windows], "overlaps": [score(o) for o in overlaps if len(o) >= 2]}


def run(comfy, frames: int, length: int | None, overlap: int, seeds, rows=ROWS, log=print, **settings) -> list[dict]:
    from bench.fidelity import read_saved

    reference = ping_pong_frames(frames, settings.get("speed", SPEED))
    windows, overlaps = regions(frames, length, overlap, settings.get("schedule", "uniform"))
    results = []
    for seed in seeds:
        for row in rows:
            prefix = f"long/{frames}_{length}_{overlap}_{seed}_{row.replace(' ', '_')}"
            graph = build_prompt(row, frames, seed, prefix, length, overlap, **settings)
            began = time.perf_counter()
            outputs = comfy.run_prompt(graph)
            seconds = time.perf_counter() - began
            generated = read_saved(comfy, outputs)
            result = {"row": row, "frames": frames, "length": length, "overlap": overlap, "seed": seed,
                      "seconds": seconds, **fidelity_by_region(reference, generated, windows, overlaps)}
            results.append(result)
            log(json.dumps(result))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", default="40,48,64", help="comma-separated clip lengths")
    parser.add_argument("--length", type=int, default=16)
    parser.add_argument("--overlap", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--json", help="also write the per-run results here")
    options = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    from bench.fidelity import start

    results = []
    with tempfile.TemporaryDirectory() as workdir:
        comfy = start(workdir)
        for frames in (int(f) for f in options.frames.split(",")):
            results += run(comfy, frames, options.length, options.overlap, range(1, options.seeds + 1))
    print("\n| frames | method | whole clip | 8-frame segments | per window (min..max) | per overlap (mean; min..max) | s / clip | s / frame |")
    print("|---|---|---|---|---|---|---|---|")
    for frames in sorted({r["frames"] for r in results}):
        for row in ROWS:
            mine = [r for r in results if r["frames"] == frames and r["row"] == row]
            if not mine:
                continue
            windows = [s for r in mine for s in r["windows"]]
            overlaps = [s for r in mine for s in r["overlaps"]] or [float("nan")]
            seconds = statistics.mean(r["seconds"] for r in mine)
            print(f"| {frames} | {row} | {statistics.mean(r['whole'] for r in mine):.2f} | "
                  f"{statistics.mean(r['segments'] for r in mine):.2f} | {min(windows):.2f}..{max(windows):.2f} | "
                  f"{statistics.mean(overlaps):.2f}; {min(overlaps):.2f}..{max(overlaps):.2f} | {seconds:.1f} | "
                  f"{seconds / frames:.2f} |")
    if options.json:
        with open(options.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
