"""Train the toy video model (UNet + motion module) on the toy world, seeded, on a CPU.

What it trains: ComfyUI's SD1.5 UNet at toy widths (`nodes/engine/toy_model.py` `TOY_UNET`) and an AnimateDiff
v3-layout motion module of this pack, jointly, from scratch, with the v-prediction objective under
AnimateDiff's noise schedule (ComfyUI's "sqrt_linear", betas 0.00085..0.012 over 1000 steps). The text
encoder is frozen at seeded weights; the VAE is fixed-function (see `training.py`), so its latents are
computed directly (`training.encode_frames`). Clips are drawn fresh at every step from the toy world
(8 frames, 128 x 128, one shape: 70 % translating at 4.5-9 px/frame, 15 % zooming, 15 % still; with
`--clip-frames 8,16` also 16-frame clips at alternate steps, at 2.25-4.5 px/frame so the path stays in the
frame, a quarter of them turning back part-way), rendered at 64 x 64 and pooled (the same 1/8 latent as
the VAE encodes from a 128 x 128 frame, to within the renderer's anti-aliasing); 10 % of prompts are dropped
for classifier-free guidance.

Writes into `--out`: toy_unet.safetensors, toy_motion_module.safetensors, toy_clip.safetensors,
toy_vae.safetensors (all float16 except the VAE's float8, exact for its weights), SHA256SUMS and
training_log.json (loss per 100 steps, wall time). Weights are the exponential moving average (decay
0.998) of the trained ones, written every few minutes, so an interrupted run leaves a usable model.

The committed weights were made with (on a 2-core machine shared with other jobs; see training_log.json):
  OMP_NUM_THREADS=1 COMFYUI_PATH=~/.cache/motionclone-ci/comfyui-v0.8.0 \
      python bench/toymodel/train.py --steps 1400 --lr 5e-4 --batch 4 --threads 1
One thread because the two cores were shared: with two, OpenMP's threads spent ~80 % of the time waiting
at barriers for each other (6.6 s per step against 1.2 s with one). On an idle machine use --threads 2.
Seeded and step-based (data, noise, timesteps and the learning-rate schedule depend only on the step),
so the same command on the same torch build gives the same weights; `--minutes` only guards the wall time
(training_log.json records whether it stopped early).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PACK_ROOT = os.path.dirname(os.path.dirname(HERE))
DEFAULT_OUT = os.path.join(PACK_ROOT, "nodes", "engine", "toy_weights")
WEIGHT_FILES = ("toy_unet.safetensors", "toy_motion_module.safetensors", "toy_clip.safetensors", "toy_vae.safetensors")


def import_comfy():
    """Make ComfyUI importable on a CPU (as the integration harness does), from COMFYUI_PATH."""
    root = os.environ.get("COMFYUI_PATH")
    if not root:
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout (e.g. ~/.cache/motionclone-ci/comfyui-v0.8.0)")
    sys.path.insert(0, os.path.expanduser(root))
    sys.path.insert(0, os.path.join(PACK_ROOT, "tests", "integration"))
    from comfy_harness import _stub_unimportable

    _stub_unimportable(("torchvision", "torchaudio"))
    from comfy.cli_args import args

    args.cpu = True
    # The same attention as the default on CPU (sub-quadratic), computed by PyTorch SDPA: several times faster here.
    args.use_pytorch_cross_attention = True


def pack_module(name: str):
    """A module of this pack imported as ComfyUI imports a custom node package (its relative imports resolve)."""
    import importlib
    import importlib.util

    if "motionclone_pack" not in sys.modules:
        spec = importlib.util.spec_from_file_location("motionclone_pack", os.path.join(PACK_ROOT, "__init__.py"),
                                                      submodule_search_locations=[PACK_ROOT])
        package = importlib.util.module_from_spec(spec)
        sys.modules["motionclone_pack"] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"motionclone_pack.{name}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps (the learning-rate schedule's length)")
    parser.add_argument("--minutes", type=float, default=45.0, help="safety limit on the wall time: stops early if hit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=4, help="clips per step")
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save-every", type=float, default=5.0, help="minutes between weight snapshots")
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--init", help="fine-tune: start from the UNet and motion module weight files in this folder")
    parser.add_argument("--clip-frames", default="8", help="frames per training clip, in turn by step (e.g. 8,16)")
    options = parser.parse_args()

    import_comfy()
    import torch

    torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    sys.path.append(PACK_ROOT)  # appended: the pack's nodes/ must not shadow ComfyUI's nodes module
    sys.path.insert(0, HERE)
    from training import ToyTrainer

    arch = pack_module("nodes.engine.toy_model")

    trainer = ToyTrainer(arch, options.seed, options.init, tuple(int(f) for f in options.clip_frames.split(",")))
    os.makedirs(options.out, exist_ok=True)
    log = {"command": " ".join(sys.argv), "planned_steps": options.steps, "seed": options.seed, "batch": options.batch,
           "lr": options.lr, "threads": options.threads, "steps": [], "loss": []}
    if options.init:
        log["init_sha256"] = _sums(options.init)  # what the fine-tune started from
    optimizer = torch.optim.AdamW(trainer.parameters(), lr=options.lr, weight_decay=0.0)
    start = time.time()
    last_save = start
    step, window = 0, []
    deadline = start + options.minutes * 60
    while step < options.steps and time.time() < deadline:
        warmup = min(1.0, (step + 1) / 200)
        progress = step / options.steps
        for group in optimizer.param_groups:
            group["lr"] = options.lr * warmup * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        loss = trainer.loss(trainer.batch(options.batch, step))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.parameters(), 1.0)
        optimizer.step()
        trainer.update_average()
        window.append(loss.item())
        step += 1
        if step % 100 == 0:
            log["steps"].append(step)
            log["loss"].append(sum(window) / len(window))
            print(f"step {step:6d}  loss {log['loss'][-1]:.4f}  {time.time() - start:7.0f} s", flush=True)
            window = []
        if time.time() - last_save > options.save_every * 60:
            save(trainer, arch, options.out, log, step, time.time() - start)
            last_save = time.time()
    save(trainer, arch, options.out, log, step, time.time() - start)


def _sums(folder: str) -> dict[str, str]:
    """The sha256 of each weight file in `folder` (SHA256SUMS), to record what a fine-tune started from."""
    from motionclone.checksums import parse_sha256sums

    with open(os.path.join(folder, "SHA256SUMS")) as handle:
        return parse_sha256sums(handle.read(), os.path.join(folder, "SHA256SUMS"), "")


def save(trainer, arch, out: str, log: dict, step: int, seconds: float) -> None:
    for name, state in trainer.export(arch).items():
        import safetensors.torch

        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(out, name))
    with open(os.path.join(out, "SHA256SUMS"), "w") as handle:
        for name in WEIGHT_FILES:
            with open(os.path.join(out, name), "rb") as weights:
                handle.write(f"{hashlib.sha256(weights.read()).hexdigest()}  {name}\n")
    log.update({"total_steps": step, "wall_seconds": round(seconds, 1), "stopped_early": step < log["planned_steps"]})
    with open(os.path.join(out, "training_log.json"), "w") as handle:
        json.dump(log, handle, indent=1)
    print(f"saved weights after {step} steps, {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
