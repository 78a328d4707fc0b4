"""The long-video runs behind `bench/long_video.py` and the long-fidelity and context-window tests.

Benchmark: cloning the motion of clips longer than one context window, through the real nodes.

Runs a real ComfyUI in-process (the integration harness) with the bundled toy model on a toy-world
reference clip of any length (a red circle going right for half the clip, then back, `ping_pong_frames`),
re-drawn as "a blue square", and reports per row (unguided / MotionClone Sampler, each with
'MotionClone: Context Windows' when the clip is longer than a window):

- motion fidelity (`motionclone.fidelity`, DMT's score, as bench/fidelity.py) over the whole clip, in each
  window, and in each overlap region (the seams) of the window layout;
- wall time per clip and per frame.

With `--memory`: the bytes autograd keeps for backward at once (`KeptForBackward`: distinct storages,
weights excluded) and the time of a guided MotionClone Sampler run on the integration tier's tiny model, for
16 to 64 frames, window-free where the motion module allows it and windowed beyond.

Usage: COMFYUI_PATH=~/.cache/motionclone-ci/comfyui-v0.8.0 python bench/long_video.py [--frames 40,48,64]
       [--length 16 --overlap 4] [--seeds 1]    (fidelity table)
       ... python bench/long_video.py --memory [--length 16 --overlap 4]    (kept bytes and time vs 16 frames)
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if PACK_ROOT not in sys.path:
    sys.path.append(PACK_ROOT)  # appended: our nodes/ must not shadow ComfyUI's nodes module

import toy_fidelity_runs as fidelity  # noqa: E402

from motionclone.toyworld import PING_PONG_SPEED, ping_pong_frames  # noqa: E402

SIZE = 128
SPEED = PING_PONG_SPEED
NEW_PROMPT = "a blue square"
ROWS = ("unguided", "MotionClone Sampler")


def build_prompt(row: str, frames: int, seed: int, prefix: str, length: int | None, overlap: int = 4,
                 schedule: str = "uniform", fusion: str = "pyramid", speed: float = SPEED, steps: int | None = None,
                 guided_steps: int | None = None) -> dict:
    """bench/fidelity.py's graph of `row` on the ping-pong clip of `frames` frames, with 'MotionClone: Context
    Windows' (`length`, `overlap`, ...) after Apply AnimateDiff for every node when `length` is given."""
    graph = fidelity.build_prompt(row, fidelity.CASES[0].clip, NEW_PROMPT, seed, prefix,
                                  steps or fidelity.STEPS, guided_steps or fidelity.GUIDED_STEPS)
    graph["latent"]["inputs"]["batch_size"] = frames
    if "reference" in graph:
        graph["reference"] = {"class_type": "MotionCloneTestToyPingPong",
                              "inputs": {"frames": frames, "speed": speed, "size": SIZE}}
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


# Frames per segment of the segment-averaged score (motionclone.fidelity.segments_of: stride 4). Eight because
# the toy model's generated tracks rarely survive longer (measured: 0-8 of 256 through 8 frames, none through 16).
SEGMENT = 8


def fidelity_by_region(reference: torch.Tensor, generated: torch.Tensor, windows: list, overlaps: list,
                       segment: int = SEGMENT) -> dict:
    """Motion fidelity (frames in clip order) of: the whole clip at once ("whole"; tracks must survive every
    frame), the mean over overlapping `segment`-frame segments covering the clip, each tracked afresh
    ("segments", `motionclone.fidelity.segmented_fidelity`; 0 where no generated track survives), each
    window, and each overlap region of the window layout."""
    from motionclone.errors import MotionCloneError
    from motionclone.fidelity import segmented_fidelity

    def score(frames):
        index = torch.tensor(sorted(frames))
        return fidelity.motion_score(reference[index], generated[index])

    try:
        segmented = segmented_fidelity(reference, generated, segment).score
    except MotionCloneError:
        segmented = 0.0  # no generated track in any segment
    return {"whole": fidelity.motion_score(reference, generated), "segments": segmented,
            "windows": [score(w) for w in windows], "overlaps": [score(o) for o in overlaps if len(o) >= 2]}


def run(comfy, frames: int, length: int | None, overlap: int, seeds, rows=ROWS, log=print, segment: int = SEGMENT,
        **settings) -> list[dict]:
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
            generated = fidelity.read_saved(comfy, outputs)
            result = {"row": row, "frames": frames, "length": length, "overlap": overlap, "seed": seed,
                      "seconds": seconds, **fidelity_by_region(reference, generated, windows, overlaps, segment)}
            results.append(result)
            log(json.dumps(result))
    return results


class KeptForBackward:
    """The most bytes autograd keeps for backward at once: distinct storages of saved tensors, weights excluded.

    A saved tensor is counted from the forward that saves it until its graph is freed (the backward of its
    gradient pass), through a handle whose release ends the count; storages shared by several saved tensors
    count once. Weights (`torch.nn.Parameter`, the autograd-ready copies included) are resident anyway.
    """

    def __init__(self):
        self.live: dict[int, list[int]] = {}  # storage address -> [saved tensors holding it, bytes]
        self.now = 0
        self.peak = 0

    def pack(self, tensor):
        if isinstance(tensor, torch.nn.Parameter):
            return tensor
        storage = tensor.untyped_storage()
        entry = self.live.setdefault(storage.data_ptr(), [0, storage.nbytes()])
        if entry[0] == 0:
            self.now += entry[1]
            self.peak = max(self.peak, self.now)
        entry[0] += 1
        return _Saved(self, storage.data_ptr(), tensor)

    @staticmethod
    def unpack(saved):
        return saved.tensor if isinstance(saved, _Saved) else saved

    def release(self, address: int) -> None:
        entry = self.live[address]
        entry[0] -= 1
        if entry[0] == 0:
            self.now -= entry[1]
            del self.live[address]


class _Saved:
    def __init__(self, meter: KeptForBackward, address: int, tensor):
        self.meter, self.address, self.tensor = meter, address, tensor

    def __del__(self):
        self.meter.release(self.address)


def kept_for_backward_of_a_guided_run(comfyui, model, frames: int) -> int:
    """Peak bytes kept for backward (`KeptForBackward`) of a 3-step MotionClone Sampler run, 2 steps guided, on
    `frames` frames of 128x128 (a tiny model's MODEL); also asserts that every graph was freed."""
    positive = comfyui.node("MotionCloneTestRandomConditioning")().build(2)[0]
    negative = comfyui.node("MotionCloneTestRandomConditioning")().build(3)[0]
    reference = {"samples": torch.randn(frames, 4, 16, 16, generator=torch.Generator().manual_seed(4))}
    motion = comfyui.node("MotionCloneExtractMotion").execute(
        model=model, width=128, height=128, resize="stretch", timestep=400, seed=1, blocks="up_blocks.1", top_k=1,
        latent=reference, conditioning=positive).args[0]
    meter = KeptForBackward()
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        comfyui.node("MotionCloneSampler").execute(
            model=model, seed=3, steps=3, guided_steps=2, guided_fraction=0.3, cfg=7.5, positive=positive,
            negative=negative, latent_image={"samples": torch.zeros(frames, 4, 16, 16)}, motion=motion,
            motion_weight=2000.0, warm_up_steps=0, cool_down_steps=0)
    if meter.now or meter.live:
        raise RuntimeError(f"{meter.now} bytes are still kept for backward after the run: a graph was not freed")
    return meter.peak


def tiny_models(comfyui, length=16, overlap=4, schedule="uniform", fusion="pyramid"):
    """`(plain, windowed)`: the tiny SD1.5-layout MODEL with `tiny_v3.safetensors` applied, and the same with
    'MotionClone: Context Windows' of that layout (the motion file must be in models/animatediff_models)."""
    model = comfyui.node("MotionCloneTestTinySD15")().build(seed=1)[0]
    motion = comfyui.node("MotionCloneLoadAnimateDiff").execute(motion_module="tiny_v3.safetensors").args[0]
    plain = comfyui.node("MotionCloneApplyAnimateDiff").execute(
        model=model, motion_model=motion, beta_schedule="sqrt_linear"
    ).args[0]
    windowed = comfyui.node("MotionCloneContextWindows").execute(model=plain, length=length, overlap=overlap,
                                                                  schedule=schedule, fusion=fusion).args[0]
    return plain, windowed


def memory_table(comfy, length: int, overlap: int, frame_counts=(16, 32, 48, 64)) -> list[dict]:
    """Kept bytes and time per guided run of the integration tier's tiny SD1.5-layout model (random weights),
    window-free where the motion module allows it (32 frames) and windowed beyond."""
    sys.path.insert(0, os.path.join(PACK_ROOT, "tests"))  # tiny_models
    import safetensors.torch
    from tiny_models import tiny_motion_state_dict

    folder = os.path.join(comfy.models_dir, "animatediff_models")
    safetensors.torch.save_file(tiny_motion_state_dict("v3", seed=11), os.path.join(folder, "tiny_v3.safetensors"))
    rows = []
    with torch.inference_mode():
        plain, windowed = tiny_models(comfy, length, overlap)
        for frames in frame_counts:
            for name, patched in (("window-free", plain), (f"windows {length}/{overlap}", windowed)):
                if name == "window-free" and frames > 32 or name != "window-free" and frames <= length:
                    continue
                began = time.perf_counter()
                kept = kept_for_backward_of_a_guided_run(comfy, patched, frames)
                rows.append({"frames": frames, "mode": name, "kept_bytes": kept,
                             "seconds": time.perf_counter() - began})
                print(json.dumps(rows[-1]))
    return rows
