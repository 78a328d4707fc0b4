"""GPU check: MotionClone on ComfyUI's own server with dynamic VRAM on and off, every memory mode, one GPU.

ComfyUI loads models with dynamic VRAM (`ModelPatcherDynamic`, comfy-aimdo) by default on NVIDIA since 0.16;
a CPU never does, so only a GPU shows how the pack's gradient pass fares there. This script starts ComfyUI's
`main.py` twice, with dynamic VRAM on (the default) and off (`--disable-dynamic-vram`), and runs in each:

- the bundled toy model at its own size (8 frames of 128x128), and
- a full-size SD1.5 checkpoint (random weights, SD1.5's 860M-parameter UNet, CLIP-L, a TAESD as VAE) loaded
  by the stock Load Checkpoint, with a v3-size motion module, at 16 frames of 512x512 (fp16 on a GPU):

Extract Motion -> MotionClone Sampler (8 steps, the first 4 guided) in every memory_mode, and a plain KSampler
(8 steps). Per run it reports: success, seconds per guided and per plain step (medians; the first step of
each kind left out), peak VRAM (`torch.cuda.max_memory_allocated` over the run, weights included), and which
patcher sampled (the pack samples a guided run on ComfyUI's classic delegate of a dynamic MODEL). Under dynamic
VRAM, weights comfy-aimdo keeps outside PyTorch's allocator are not in the peak. Then it
compares each guided latent of dynamic VRAM on with the one of off: their largest difference relative to the
latent's largest magnitude, within TOLERANCE (the delegate runs the same weights and kernels; the difference
is the GPU's run-to-run nondeterminism, far below anything visible).

`--cpu`: a dry run on the CPU at tiny sizes, both servers at once (toy 4 frames of 64x64; SD1.5 replaced by the
tests' narrow SD1.5-layout checkpoint at 2 frames of 64x64, 4 steps), so that the script cannot rot: a test runs
it. A CPU has no dynamic VRAM: both servers load classically.

Usage: COMFYUI_PATH=<ComfyUI 0.16 or newer> python bench/gpu_check.py [--cpu] [--keep DIR]
Needs the ComfyUI's requirements (comfy-aimdo with them) and a CUDA torch; made to finish in 8 minutes on one H100.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.append(os.path.join(HERE, ".."))  # the pack's `motionclone`; appended: its `nodes/` must not shadow ComfyUI's

MODES = ("fast", "balanced", "low")
TOLERANCE = 1e-2  # max |dynamic - classic| / max |classic| of a guided latent
MIB = 2**20


@dataclass(frozen=True)
class Case:
    """One model at one size: how to build its MODEL, CLIP, VAE, reference clip and sampling settings."""

    name: str
    frames: int
    size: int
    steps: int
    guided: int


def cases(cpu: bool) -> list[Case]:
    if cpu:
        return [Case("toy", 4, 64, 4, 2), Case("sd15", 2, 64, 4, 2)]
    return [Case("toy", 8, 128, 8, 4), Case("sd15", 16, 512, 8, 4)]


CHECKPOINT, MOTION_MODULE = "sd15_random.safetensors", "v3_random.safetensors"


def write_models(models: Path, cpu: bool) -> None:
    """The SD1.5 checkpoint and v3 module (full size, or the tests' narrow ones with --cpu), written once."""
    import safetensors.torch
    import torch
    from model_files import CHECKPOINT_CHANNELS, CHECKPOINT_UNET, SD15_CHANNELS, SD15_UNET, write_sd15_checkpoint
    from tiny_models import tiny_motion_state_dict

    (models / "checkpoints").mkdir(parents=True, exist_ok=True)
    (models / "animatediff_models").mkdir(parents=True, exist_ok=True)
    write_sd15_checkpoint(models / "checkpoints" / CHECKPOINT, CHECKPOINT_UNET if cpu else SD15_UNET)
    state = tiny_motion_state_dict("v3", seed=11, channels=CHECKPOINT_CHANNELS if cpu else SD15_CHANNELS)
    safetensors.torch.save_file({k: v.to(torch.float16).contiguous() for k, v in state.items()},
                                str(models / "animatediff_models" / MOTION_MODULE))


def prompt(case: Case, mode: str | None, clock: str, latent_path: str) -> dict:
    """Extract Motion -> MotionClone Sampler in `mode` (None: a plain KSampler), the model through StepClock."""
    if case.name == "toy":
        nodes = {
            "loader": {"class_type": "MotionCloneLoadToyModel", "inputs": {}},
            "apply": {"class_type": "MotionCloneApplyAnimateDiff", "inputs": {
                "model": ["loader", 0], "motion_model": ["loader", 3], "beta_schedule": "sqrt_linear"}},
            "reference": {"class_type": "MotionCloneToyReferenceClip", "inputs": {
                "clip": "red circle moving right", "frames": case.frames, "size": case.size}},
        }
        clip, vae = ["loader", 1], ["loader", 2]
        text = "a blue square"
    else:
        nodes = {
            "loader": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
            "motion_module": {"class_type": "MotionCloneLoadAnimateDiff", "inputs": {"motion_module": MOTION_MODULE}},
            "apply": {"class_type": "MotionCloneApplyAnimateDiff", "inputs": {
                "model": ["loader", 0], "motion_model": ["motion_module", 0], "beta_schedule": "sqrt_linear"}},
            "reference": {"class_type": "MotionCloneTestMovingSquare", "inputs": {
                "frames": case.frames, "width": case.size, "height": case.size}},
        }
        clip, vae = ["loader", 1], ["loader", 2]
        text = "a fox running through snow"
    nodes.update({
        "positive": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": clip}},
        "negative": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": clip}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": case.size, "height": case.size,
                                                                "batch_size": case.frames}},
        "clock": {"class_type": "MotionCloneTestStepClock", "inputs": {"model": ["apply", 0], "report_path": clock}},
    })
    if mode is None:
        nodes["sample"] = {"class_type": "KSampler", "inputs": {
            "model": ["clock", 0], "seed": 5, "steps": case.steps, "cfg": 8.5, "sampler_name": "ddim",
            "scheduler": "ddim_uniform", "positive": ["positive", 0], "negative": ["negative", 0],
            "latent_image": ["latent", 0], "denoise": 1.0}}
    else:
        nodes["extract"] = {"class_type": "MotionCloneExtractMotion", "inputs": {
            "model": ["apply", 0], "images": ["reference", 0], "vae": vae, "clip": clip, "width": case.size,
            "height": case.size, "resize": "stretch", "timestep": 400, "seed": 5, "blocks": "up_blocks.1", "top_k": 1}}
        nodes["sample"] = {"class_type": "MotionCloneSampler", "inputs": {
            "model": ["clock", 0], "seed": 5, "steps": case.steps, "guided_steps": case.guided, "guided_fraction": 0.3,
            "cfg": 8.5, "positive": ["positive", 0], "negative": ["negative", 0], "latent_image": ["latent", 0],
            "motion": ["extract", 0], "motion_weight": 2000.0, "warm_up_steps": 1, "cool_down_steps": 1,
            "memory_mode": mode, "gradient_every": 1}}
    nodes["save"] = {"class_type": "MotionCloneTestSaveLatent",
                     "inputs": {"samples": ["sample", 0], "path": latent_path}}
    return nodes


def step_seconds(seconds: list[float], first: int, last: int) -> float | None:
    """Median duration of steps first..last-1 (step k lasts from reading k to reading k + 1; reading 0 is the
    run's start). None when the range is empty."""
    durations = [seconds[k + 1] - seconds[k] for k in range(first, last) if k + 1 < len(seconds)]
    return statistics.median(durations) if durations else None


def run_config(root: str, work: Path, models: Path, dynamic: bool, cpu: bool, flags: tuple[str, ...]) -> list[dict]:
    """Every case and mode on one server started with `flags`; a row per run."""
    from comfy_server import install_pack, running_server

    base = work / ("dynamic" if dynamic else "classic")
    install_pack(base)
    os.symlink(models, base / "models")
    rows = []
    with running_server(root, base, *flags, timeout=300, cpu=cpu) as server:
        for case in cases(cpu):
            for mode in (*MODES, None):
                label = mode or "plain KSampler"
                clock, latent = base / f"{case.name}_{label}.json", base / f"{case.name}_{label}.safetensors"
                row = {"case": case, "mode": label, "dynamic_vram": dynamic, "latent": str(latent)}
                started = time.perf_counter()
                try:
                    server.run(prompt(case, mode, str(clock), str(latent)), timeout=600)
                except AssertionError as failure:
                    row["error"] = str(failure)[-400:]
                else:
                    (run,) = json.loads(clock.read_text())
                    seconds = run["seconds"]
                    guided = case.guided if mode else 0
                    row.update(guided_s=step_seconds(seconds, 1, guided) if guided else None,
                               plain_s=step_seconds(seconds, guided + 1, case.steps),
                               peak=max(run["peak_bytes"]), sampled_dynamic=run["dynamic"])
                row["wall_s"] = time.perf_counter() - started
                rows.append(row)
                print(f"{'dynamic' if dynamic else 'classic'} {case.name} {label}: "
                      f"{'FAILED ' + row['error'] if 'error' in row else 'ok'} ({row['wall_s']:.0f} s)", flush=True)
    return rows


def compare(rows: list[dict]) -> dict[tuple[str, str], float | None]:
    """(case, mode) -> max |dynamic - classic| / max |classic| of the latents, where both runs succeeded."""
    import safetensors.torch

    def latent(row):
        return safetensors.torch.load_file(row["latent"])["samples"].float()

    by_key = {(r["case"].name, r["mode"], r["dynamic_vram"]): r for r in rows}
    differences = {}
    for (name, mode, dynamic), row in by_key.items():
        other = by_key.get((name, mode, False))
        if not dynamic or other is None or "error" in row or "error" in other:
            continue
        classic = latent(other)
        differences[(name, mode)] = float((latent(row) - classic).abs().max() / classic.abs().max())
    return differences


def report(rows: list[dict], differences: dict, device: str) -> str:
    def seconds(value):
        return "—" if value is None else f"{value:.3f}"

    lines = [f"MotionClone GPU check on {device}, ComfyUI {COMFY_VERSION}", "",
             "| model, frames x size | dynamic VRAM | memory_mode | result | patcher sampling | s / guided step | "
             "s / plain step | peak VRAM MiB | latent vs dynamic off |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        case = r["case"]
        model = f"{'toy' if case.name == 'toy' else 'SD1.5 + v3'}, {case.frames}x{case.size}²"
        if "error" in r:
            lines.append(f"| {model} | {'on' if r['dynamic_vram'] else 'off'} | {r['mode']} | FAILED: "
                         f"{r['error'].splitlines()[-1][:120]} | | | | | |")
            continue
        difference = differences.get((case.name, r["mode"]))
        compared = ("—" if not r["dynamic_vram"] or difference is None else
                    f"{difference:.1e} ({'within' if difference <= TOLERANCE else 'ABOVE'} {TOLERANCE:g})")
        lines.append(f"| {model} | {'on' if r['dynamic_vram'] else 'off'} | {r['mode']} | ok | "
                     f"{'dynamic' if r['sampled_dynamic'] else 'classic'} | {seconds(r['guided_s'])} | "
                     f"{seconds(r['plain_s'])} | {r['peak'] / MIB:.0f} | {compared} |".replace("| 0 |", "| — |"))
    return "\n".join(lines)


COMFY_VERSION = "?"


def main() -> int:
    global COMFY_VERSION
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="a dry run on the CPU at tiny sizes")
    parser.add_argument("--keep", default=None,
                        help="folder for the models, servers' logs and latents (default: a temporary one)")
    args = parser.parse_args()

    from comfy_harness import find_comfyui, keep_bytecode_outside

    root, reason = find_comfyui()
    if root is None:
        sys.exit(f"gpu_check needs a ComfyUI: {reason}")
    keep_bytecode_outside()
    sys.path.insert(0, root)
    from comfy_harness import _stub_unimportable

    _stub_unimportable(("torchvision", "torchaudio"))
    import torch
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = True  # this process only writes the model files; the servers hold the GPU
    if not args.cpu and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --cpu for the dry run")
    has_dynamic_vram = hasattr(comfy_args, "disable_dynamic_vram")
    import comfyui_version

    COMFY_VERSION = comfyui_version.__version__
    work = Path(args.keep or tempfile.mkdtemp(prefix="motionclone_gpu_check_"))
    models = work / "models"
    started = time.perf_counter()
    write_models(models, args.cpu)
    print(f"models written in {time.perf_counter() - started:.0f} s", flush=True)
    rows = []
    configs = ((True, ()), (False, ("--disable-dynamic-vram",))) if has_dynamic_vram else ((False, ()),)
    # On a GPU one server at a time (the timings and peaks are the point); the dry run's servers side by side.
    with concurrent.futures.ThreadPoolExecutor(len(configs) if args.cpu else 1) as pool:
        for part in pool.map(lambda config: run_config(root, work, models, config[0], args.cpu, config[1]), configs):
            rows += part
    if not has_dynamic_vram:
        print(f"ComfyUI {COMFY_VERSION} has no dynamic VRAM (no --disable-dynamic-vram): classic loading only")
    device = "CPU (dry run: no dynamic VRAM on a CPU)" if args.cpu else torch.cuda.get_device_name()
    print()
    print(report(rows, compare(rows), device))
    print(f"\ntotal {time.perf_counter() - started:.0f} s; logs and latents in {work}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
