"""The toy-world fidelity runs behind `bench/fidelity.py` and `test_toy_fidelity.py`: graphs, measures, a table.

Benchmark: how much of a reference clip's motion ends up in the new video, through the real nodes.

Runs a real ComfyUI in-process (the integration harness) with the bundled toy model ('MotionClone: Load
Toy Model') on toy-world reference clips with known motion, each re-drawn with a new prompt (another
colour and shape), for several seeds, and prints one row per method:

- unguided: Apply AnimateDiff + stock KSampler (ddim), no motion guidance: the baseline;
- MotionClone Sampler: Extract Motion -> MotionClone Sampler (the graph of workflow 1, "speed mode");
- fidelity mode: DDIM inversion of the reference, Extract Motion from the inversion, subject masks
  (Cross-Attention Mask on the shape words) and Semantic Guidance into MotionClone Sampler (workflow 5);
- Guidance + KSampler ddim / euler / dpmpp_2m: Extract Motion -> 'MotionClone: Guidance' -> stock KSampler
  (the graph of workflow 4);
- "... (gradient every N)": the same graph with `gradient_every` N (the gradient pass on every N-th guided
  step, reused in between).

Measures per generated clip (the reference is the clip given to Extract Motion):
- motion fidelity: the DMT score of `motionclone.fidelity.motion_fidelity` (1 = same motion; 0 for a clip
  in which no point can be tracked through all frames);
- prompt fidelity: the share of foreground pixels (pixels at least FOREGROUND_DISTANCE from the plain
  background colour) whose nearest named toy-world colour is the prompt's colour ("colour"), and whether
  the foreground's fill of its bounding box is nearest to that of the prompt's shape ("shape": a circle
  fills ~0.79 of its box, a square ~1, a triangle ~0.5; the expected values are measured on the toy
  world's own renders of each shape through the toy VAE, so the VAE's soft edges count for all alike).
  A frame whose foreground covers under 0.5 % or over 40 % of it has no subject (0 colour, no shape);
- temporal consistency: the mean IoU of consecutive foreground masks after aligning their centroids
  (1 = the subject keeps its shape and size from frame to frame; motion itself does not lower it);
- wall time per generated clip (sampling + decoding, the graph's own execution).

Usage: COMFYUI_PATH=~/.cache/motionclone-ci/comfyui-v0.8.0 python bench/fidelity.py [--quick] [--seeds 3]
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from motionclone.toyworld import toy_clip_frames

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FRAMES, SIZE = 8, 128
FOREGROUND_DISTANCE = 0.25  # RGB distance from the background that counts as foreground
SUBJECT_AREA = (0.005, 0.4)  # a frame's foreground is a subject when it covers this share of the frame
STEPS, GUIDED_STEPS, GUIDED_FRACTION = 20, 8, 0.4
MOTION_WEIGHT, CFG = 2000.0, 7.5
EXTRACT_TIMESTEP = 400
NEGATIVE_PROMPT = ""


@dataclass(frozen=True)
class Case:
    """A bundled reference clip ('MotionClone: Toy Reference Clip' option) and the new prompt it is re-drawn with."""

    clip: str
    new_prompt: str

    @property
    def name(self) -> str:
        return self.clip.replace(" ", "-")


CASES = (
    Case("red circle moving right", "a blue square"),
    Case("yellow square moving up-left", "a green circle"),
    Case("cyan triangle moving down", "a magenta square"),
    Case("white square moving left", "an orange triangle"),
)


def cases(quick: bool = False) -> list[Case]:
    """The fixed reference clips: four directions at 7-8 px/frame (of 128), each re-drawn as another shape."""
    return list(CASES[:1] if quick else CASES)


FIDELITY_MODE = "fidelity mode (inversion + masks + semantic)"
REUSE = " (gradient every "
ROWS = ("unguided", "MotionClone Sampler", f"MotionClone Sampler{REUSE}2)", f"MotionClone Sampler{REUSE}3)",
        FIDELITY_MODE, "Guidance + KSampler ddim", f"Guidance + KSampler ddim{REUSE}2)",
        f"Guidance + KSampler ddim{REUSE}3)",
        "Guidance + KSampler euler", "Guidance + KSampler dpmpp_2m")


def gradient_every(row: str) -> tuple[str, int]:
    """("MotionClone Sampler (gradient every 2)") -> ("MotionClone Sampler", 2); 1 for a row without reuse."""
    method, _, every = row.partition(REUSE)
    return method, int(every.rstrip(")")) if every else 1
SEMANTIC_WEIGHT = 500.0


def build_prompt(row: str, reference_clip: str, new_prompt: str, seed: int, prefix: str, steps: int = STEPS,
                 guided_steps: int = GUIDED_STEPS, memory_mode: str | None = None) -> dict:
    """The API-format graph of one benchmark row: toy model -> Apply AnimateDiff -> (Extract Motion ->
    guidance) -> sampler -> VAE Decode -> SaveImage. `memory_mode` is given to the guided node, if any."""
    graph = _build_prompt(row, reference_clip, new_prompt, seed, prefix, steps, guided_steps)
    if memory_mode is not None:
        for node in graph.values():
            if node["class_type"] in ("MotionCloneSampler", "MotionCloneGuidance"):
                node["inputs"]["memory_mode"] = memory_mode
    return graph


def _build_prompt(row: str, reference_clip: str, new_prompt: str, seed: int, prefix: str, steps: int,
                  guided_steps: int) -> dict:
    graph = {
        "toy": {"class_type": "MotionCloneLoadToyModel", "inputs": {}},
        "apply": {"class_type": "MotionCloneApplyAnimateDiff",
                  "inputs": {"model": ["toy", 0], "motion_model": ["toy", 3], "beta_schedule": "sqrt_linear"}},
        "positive": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["toy", 1], "text": new_prompt}},
        "negative": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["toy", 1], "text": NEGATIVE_PROMPT}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": FRAMES}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["toy", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}},
    }
    ramp = max(1, guided_steps // 4)
    row, every = gradient_every(row)
    if row == FIDELITY_MODE:
        return _fidelity_mode(graph, reference_clip, new_prompt, seed, steps, guided_steps, ramp)
    if row != "unguided":
        graph.update({
            "reference": {"class_type": "MotionCloneToyReferenceClip",
                          "inputs": {"clip": reference_clip, "frames": FRAMES, "size": SIZE}},
            # No reference prompt: Extract Motion encodes the empty prompt, as the official code does.
            "extract": {"class_type": "MotionCloneExtractMotion", "inputs": {
                "model": ["apply", 0], "images": ["reference", 0], "vae": ["toy", 2], "clip": ["toy", 1],
                "width": SIZE, "height": SIZE, "resize": "stretch",
                "timestep": EXTRACT_TIMESTEP, "seed": seed, "blocks": "up_blocks.1", "top_k": 1}},
        })
    common = {"seed": seed, "cfg": CFG, "positive": ["positive", 0], "negative": ["negative", 0],
              "latent_image": ["latent", 0]}
    if row == "unguided":
        graph["sample"] = {"class_type": "KSampler", "inputs": {
            **common, "model": ["apply", 0], "steps": steps, "sampler_name": "ddim", "scheduler": "ddim_uniform",
            "denoise": 1.0}}
    elif row == "MotionClone Sampler":
        graph["sample"] = {"class_type": "MotionCloneSampler", "inputs": {
            **common, "model": ["apply", 0], "steps": steps, "guided_steps": guided_steps,
            "guided_fraction": GUIDED_FRACTION, "motion": ["extract", 0], "motion_weight": MOTION_WEIGHT,
            "warm_up_steps": ramp, "cool_down_steps": ramp, "gradient_every": every}}
    else:
        sampler = row.rsplit(" ", 1)[1]
        graph["guidance"] = {"class_type": "MotionCloneGuidance", "inputs": {
            "model": ["apply", 0], "motion": ["extract", 0], "motion_weight": MOTION_WEIGHT,
            "guided_fraction": GUIDED_FRACTION, "warm_up_steps": ramp, "cool_down_steps": ramp,
            "gradient_every": every}}
        graph["sample"] = {"class_type": "KSampler", "inputs": {
            **common, "model": ["guidance", 0], "steps": steps, "sampler_name": sampler,
            "scheduler": "ddim_uniform" if sampler == "ddim" else "normal", "denoise": 1.0}}
    return graph


def _fidelity_mode(graph: dict, reference_clip: str, new_prompt: str, seed: int, steps: int, guided_steps: int,
                   ramp: int) -> dict:
    """Workflow 5's graph: DDIM inversion of the reference, motion read from the inverted latents at every
    guided step, subject masks from cross-attention to the shape words, location-aware semantic guidance."""
    colour, kind = clip_subject(reference_clip)
    reference_prompt = f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {kind}"
    schedule = {"steps": steps, "guided_steps": guided_steps, "guided_fraction": GUIDED_FRACTION}
    mask_settings = {"threshold": 0.3, "blur_kernel_size": 1, "blur_sigma": 1.0, "centroid_sigma": 5.0,
                     "timestep": EXTRACT_TIMESTEP, "seed": seed}
    graph.update({
        "reference": {"class_type": "MotionCloneToyReferenceClip",
                      "inputs": {"clip": reference_clip, "frames": FRAMES, "size": SIZE}},
        "encode": {"class_type": "VAEEncode", "inputs": {"pixels": ["reference", 0], "vae": ["toy", 2]}},
        "reference_prompt": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["toy", 1], "text": reference_prompt}},
        "inversion": {"class_type": "MotionCloneDDIMInversion", "inputs": {
            "model": ["apply", 0], "latent": ["encode", 0], "conditioning": ["reference_prompt", 0], "steps": steps}},
        "extract": {"class_type": "MotionCloneExtractMotion", "inputs": {
            "model": ["apply", 0], "inversion": ["inversion", 0], "conditioning": ["reference_prompt", 0],
            "width": SIZE, "height": SIZE, "resize": "stretch", "timestep": EXTRACT_TIMESTEP, "seed": seed,
            "blocks": "up_blocks.1", "top_k": 1, **schedule}},
        "reference_mask": {"class_type": "MotionCloneCrossAttentionMask", "inputs": {
            "model": ["apply", 0], "clip": ["toy", 1], "inversion": ["inversion", 0], "prompt": reference_prompt,
            "subject": kind, **mask_settings}},
        "subject_mask": {"class_type": "MotionCloneCrossAttentionMask", "inputs": {
            "model": ["apply", 0], "clip": ["toy", 1], "prompt": new_prompt, "subject": parse_prompt(new_prompt)[1],
            **mask_settings}},
        "semantic": {"class_type": "MotionCloneSemanticGuidance", "inputs": {
            "weight_up_blocks_1": SEMANTIC_WEIGHT, "weight_up_blocks_2": 0.0,
            "reference_mask": ["reference_mask", 1], "subject_mask": ["subject_mask", 1]}},
        "sample": {"class_type": "MotionCloneSampler", "inputs": {
            "seed": seed, "cfg": CFG, "positive": ["positive", 0], "negative": ["negative", 0],
            "latent_image": ["latent", 0], "model": ["apply", 0], **schedule, "motion": ["extract", 0],
            "motion_weight": MOTION_WEIGHT, "warm_up_steps": ramp, "cool_down_steps": ramp,
            "semantic_guidance": ["semantic", 0]}},
    })
    return graph


def clip_subject(reference_clip: str) -> tuple[str, str]:
    """("red circle moving right") -> ("red", "circle")."""
    colour, kind = reference_clip.split()[:2]
    return colour, kind


# ---------------------------------------------------------------------------------------------- measures


def foreground_mask(frames: torch.Tensor) -> torch.Tensor:
    """`(F, H, W)` bool: pixels at least FOREGROUND_DISTANCE (RGB) from the toy world's plain background.
    A frame whose foreground is no subject (under 0.5 % or over 40 % of the frame: empty, or noise and
    texture all over) gets an empty mask, so it counts as no subject in every measure."""
    from motionclone.toyworld import PLAIN_BACKGROUND

    mask = (frames - torch.tensor(PLAIN_BACKGROUND)).norm(dim=-1) >= FOREGROUND_DISTANCE
    share = mask.float().mean(dim=(1, 2))
    subject = (share >= SUBJECT_AREA[0]) & (share <= SUBJECT_AREA[1])
    return mask & subject[:, None, None]


def colour_share(frames: torch.Tensor, colour: str) -> float:
    """Share of foreground pixels whose nearest named colour is `colour` (0 when there is no foreground)."""
    from motionclone.toyworld import COLOURS

    mask = foreground_mask(frames)
    if not mask.any():
        return 0.0
    names = list(COLOURS)
    palette = torch.tensor([COLOURS[n] for n in names])
    nearest = torch.cdist(frames[mask].reshape(-1, 3), palette).argmin(dim=1)
    return float((nearest == names.index(colour)).float().mean())


def box_fill(mask: torch.Tensor) -> float:
    """Mean over frames of foreground area / bounding-box area (frames without foreground are skipped)."""
    fills = []
    for frame in mask:
        ys, xs = torch.nonzero(frame, as_tuple=True)
        if len(ys) < 4:
            continue
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        fills.append(float(frame.sum()) / float(box))
    return statistics.mean(fills) if fills else float("nan")


def temporal_consistency(frames: torch.Tensor) -> float:
    """Mean IoU of consecutive foreground masks, each pair aligned by the (rounded) centroid shift."""
    mask = foreground_mask(frames)
    ious = []
    for a, b in zip(mask[:-1], mask[1:]):
        if not a.any() or not b.any():
            ious.append(0.0)
            continue
        ca = torch.nonzero(a).float().mean(0)
        cb = torch.nonzero(b).float().mean(0)
        shift = [int(v) for v in torch.round(ca - cb).tolist()]
        b = torch.roll(b, shifts=shift, dims=(0, 1))
        ious.append(float((a & b).sum()) / float((a | b).sum()))
    return statistics.mean(ious)


def parse_prompt(prompt: str) -> tuple[str, str]:
    """("a blue square") -> ("blue", "square")."""
    words = prompt.split()
    return words[-2], words[-1]


class ShapeJudge:
    """Nearest-expected-fill shape classifier, calibrated on toy renders of each shape through the toy VAE."""

    def __init__(self, vae):
        from motionclone.toyworld import SHAPES, ClipSpec, ShapeSpec, render_clip

        self.expected = {}
        for kind in SHAPES:
            shape = ShapeSpec(kind, "white", (SIZE / 2, SIZE / 2), 0.16 * SIZE)
            frames = render_clip(ClipSpec((shape,), 2, SIZE, SIZE)).frames
            decoded = vae.decode(vae.encode(frames))
            self.expected[kind] = box_fill(foreground_mask(decoded.reshape(-1, SIZE, SIZE, 3).float()))

    def judge(self, frames: torch.Tensor) -> str:
        fill = box_fill(foreground_mask(frames))
        if math.isnan(fill):
            return "none"
        return min(self.expected, key=lambda kind: abs(self.expected[kind] - fill))


def motion_score(reference: torch.Tensor, generated: torch.Tensor) -> float:
    """DMT motion fidelity; 0 for a generated clip in which no point can be tracked (nothing follows the
    reference's motion)."""
    from motionclone.errors import MotionCloneError
    from motionclone.fidelity import motion_fidelity

    try:
        return motion_fidelity(reference, generated).score
    except MotionCloneError:
        return 0.0


def measure(reference: torch.Tensor, generated: torch.Tensor, new_prompt: str, judge: ShapeJudge) -> dict:
    colour, shape = parse_prompt(new_prompt)
    return {
        "motion_fidelity": motion_score(reference, generated),
        "colour": colour_share(generated, colour),
        "shape": float(judge.judge(generated) == shape),
        "temporal": temporal_consistency(generated),
    }


# ---------------------------------------------------------------------------------------------- running


def read_saved(comfy, outputs: dict) -> torch.Tensor:
    """The frames SaveImage wrote, `(F, H, W, 3)` in [0, 1]."""
    from PIL import Image

    images = outputs["save"]["images"]
    frames = [
        np.asarray(Image.open(os.path.join(comfy.output_dir, image["subfolder"], image["filename"])).convert("RGB"))
        for image in images
    ]
    return torch.from_numpy(np.stack(frames)).float() / 255


def start(workdir: str):
    if PACK_ROOT not in sys.path:
        sys.path.append(PACK_ROOT)  # appended: our nodes/ must not shadow ComfyUI's nodes module
    from comfy_harness import find_comfyui, start_comfyui

    root, reason = find_comfyui()
    if root is None:
        sys.exit(f"the benchmark needs a ComfyUI: {reason}")
    return start_comfyui(root, workdir)


def toy_model_module():
    """The pack's `nodes.engine.toy_model` as ComfyUI loaded it (the toy VAE)."""
    from comfy_harness import loaded_pack_module

    return loaded_pack_module("nodes.engine.toy_model")


def run(comfy, rows, case_list, seeds, steps=STEPS, guided_steps=GUIDED_STEPS, log=print,
        memory_mode: str | None = None) -> list[dict]:
    toy = toy_model_module()
    judge = ShapeJudge(toy.load_toy_vae())
    results = []
    for case in case_list:
        reference = toy_clip_frames(case.clip, FRAMES, SIZE)
        for seed in seeds:
            for row in rows:
                prefix = f"bench/{case.name}_{seed}_{row.replace(' ', '_').replace('+', '')}"
                graph = build_prompt(row, case.clip, case.new_prompt, seed, prefix, steps, guided_steps, memory_mode)
                began = time.perf_counter()
                outputs = comfy.run_prompt(graph)
                seconds = time.perf_counter() - began
                generated = read_saved(comfy, outputs)
                result = {"row": row, "case": case.name, "seed": seed, "seconds": seconds,
                          **measure(reference, generated, case.new_prompt, judge)}
                results.append(result)
                log(json.dumps(result))
    return results


def table(results: list[dict], rows=ROWS) -> str:
    """Markdown table: mean ± standard deviation over cases x seeds per row."""
    def cell(values, digits=2):
        if len(values) < 2:
            return f"{values[0]:.{digits}f}"
        return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"

    lines = ["| method | motion fidelity | colour | shape | temporal consistency | s / clip | runs |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        mine = [r for r in results if r["row"] == row]
        if not mine:
            continue
        lines.append(f"| {row} | {cell([r['motion_fidelity'] for r in mine])} | {cell([r['colour'] for r in mine])} | "
                     f"{cell([r['shape'] for r in mine])} | {cell([r['temporal'] for r in mine])} | "
                     f"{cell([r['seconds'] for r in mine], 1)} | {len(mine)} |")
    return "\n".join(lines)
