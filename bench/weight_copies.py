"""Benchmark: does the gradient pass of a guided step leave a second copy of the weights alive?

Runs a real ComfyUI in-process (the integration harness): an SD1.5-layout MODEL built as ComfyUI's loaders
build one (the tiny test UNet, or with --full-size SD1.5's UNet and a v3-size motion module), optionally a
LoRA on its attention layers (ComfyUI then re-creates those weights when it loads the model), Apply AnimateDiff,
then a KSampler run under `torch.inference_mode()` (as ComfyUI runs nodes) whose PREDICT_NOISE wrapper takes
the gradient of a temporal-attention loss through the pack's `attention_loss_gradient` at every step.

Reports, at each point (before sampling, after the first gradient pass, after sampling, after ComfyUI
unloaded the models):
- weights: bytes of the distinct storages of every parameter and buffer of the UNet and the motion model
  plus the ModelPatcher's backups (the LoRA's originals);
- replaced: bytes of weight tensors the pass swapped out of the modules (the old tensor was replaced);
- duplicated: bytes of replaced tensors still alive besides their replacement (both copies in memory);
- RSS and the peak RSS since the previous point (Linux: VmRSS, VmHWM after /proc/self/clear_refs).

Usage: COMFYUI_PATH=~/.cache/motionclone-ci/comfyui-v0.8.0 python bench/weight_copies.py [--lora] [--full-size]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import weakref

HERE = os.path.dirname(os.path.abspath(__file__))
PACK_ROOT = os.path.dirname(HERE)
MiB = 2**20


def _status(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _tensors(patcher, motion_model):
    """(owner, name, tensor) of every parameter and buffer of the UNet and the motion model."""
    for root in (patcher.model.diffusion_model, motion_model):
        for module in root.modules():
            for name, tensor in (*module._parameters.items(), *module._buffers.items()):
                if tensor is not None:
                    yield module, name, tensor


def _storage_bytes(tensors) -> int:
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


class Census:
    def __init__(self, patcher, motion_model):
        self.patcher, self.motion_model = patcher, motion_model
        self.originals: dict[tuple[int, str], tuple[weakref.ref, int, int]] = {}
        self.rows: list[tuple] = []

    def remember(self):
        """Note every weight tensor as it is now (after ComfyUI loaded and patched the model)."""
        for module, name, tensor in _tensors(self.patcher, self.motion_model):
            self.originals[(id(module), name)] = (weakref.ref(tensor), tensor.untyped_storage().data_ptr(),
                                                  tensor.untyped_storage().nbytes())

    def point(self, label: str):
        gc.collect()
        current = list(_tensors(self.patcher, self.motion_model))
        backups = [b.weight if hasattr(b, "weight") else b[0] for b in self.patcher.backup.values()]
        weights = _storage_bytes([t for _, _, t in current] + backups)
        replaced = duplicated = 0
        now = {(id(m), n): t.untyped_storage().data_ptr() for m, n, t in current}
        for key, (ref, pointer, nbytes) in self.originals.items():
            if key in now and now[key] != pointer:
                replaced += nbytes
                if ref() is not None:
                    duplicated += nbytes
        self.rows.append((label, weights, replaced, duplicated, _status("VmRSS"), _status("VmHWM")))
        _reset_peak()

    def table(self) -> str:
        lines = ["| point | weights MiB | replaced MiB | duplicated MiB | RSS MiB | peak RSS MiB |",
                 "|---|---|---|---|---|---|"]
        for label, *numbers in self.rows:
            lines.append(f"| {label} | " + " | ".join(f"{n / MiB:.1f}" for n in numbers) + " |")
        return "\n".join(lines)


def build_model(full_size: bool, weight_dtype):
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    from model_files import SD15_UNET
    from testing_pack import TINY_UNET, seeded_weights

    config = comfy.supported_models.SD15(dict(SD15_UNET if full_size else TINY_UNET))
    device = comfy.model_management.get_torch_device()
    config.set_inference_dtype(weight_dtype, comfy.model_management.unet_manual_cast(weight_dtype, device))
    model = config.get_model({})
    weights = seeded_weights(model.diffusion_model, 0)
    model.load_model_weights({f"model.diffusion_model.{k}": v for k, v in weights.items()}, "model.diffusion_model.")
    del weights
    return comfy.model_patcher.ModelPatcher(model, device, comfy.model_management.unet_offload_device())


def write_motion_module(path: str, full_size: bool):
    import safetensors.torch
    from tiny_models import TINY_CHANNELS, tiny_motion_state_dict

    channels = (320, 640, 1280, 1280) if full_size else TINY_CHANNELS
    state = tiny_motion_state_dict("v3", seed=11, channels=channels)
    safetensors.torch.save_file({k: v.half() for k, v in state.items()}, path)


def lora_patches(patcher, strength=1.0):
    """A rank-4 LoRA on every attention projection of the UNet, as ComfyUI's LoRA loader adds it."""
    import comfy.lora
    import torch

    generator = torch.Generator().manual_seed(5)
    state = {}
    for key, value in patcher.model.state_dict().items():
        if ".transformer_blocks." in key and key.endswith(("to_q.weight", "to_k.weight", "to_v.weight")):
            stem = key[: -len(".weight")].replace("diffusion_model.", "lora_unet_", 1)
            state[f"{stem}.lora_up.weight"] = torch.randn(value.shape[0], 4, generator=generator) * 0.01
            state[f"{stem}.lora_down.weight"] = torch.randn(4, value.shape[1], generator=generator) * 0.01
    key_map = {k.replace("diffusion_model.", "lora_unet_", 1)[: -len(".weight")]: k
               for k in patcher.model.state_dict() if k.startswith("diffusion_model.")}
    patched = patcher.clone()
    patched.add_patches(comfy.lora.load_lora(state, key_map), strength)
    return patched


def run(comfyui, args) -> Census:
    import comfy.model_management
    import comfy.patcher_extension
    import torch
    from comfy_harness import loaded_pack_module

    gradient, patching = loaded_pack_module("nodes.engine.gradient"), loaded_pack_module("nodes.engine.run")
    weight_dtype = torch.float16 if args.full_size else torch.float32
    motion_file = os.path.join(comfyui.models_dir, "animatediff_models", "weight_copies.safetensors")
    write_motion_module(motion_file, args.full_size)
    context_dim = 768 if args.full_size else 64
    census: list[Census] = []
    with torch.inference_mode():
        model = build_model(args.full_size, weight_dtype)
        if args.lora:
            model = lora_patches(model)
        motion = comfyui.node("MotionCloneLoadAnimateDiff").execute(motion_module="weight_copies.safetensors").args[0]
        patched = comfyui.node("MotionCloneApplyAnimateDiff").execute(
            model=model, motion_model=motion, beta_schedule="sqrt_linear"
        ).args[0]
        motion_model = patching.motion_model_of(patched)

        def loss_fn(capture):
            return sum(((p - torch.eye(p.shape[-1])) ** 2).mean() for p in capture.probs.values())

        def predict_noise(executor, x, timestep, model_options={}, seed=None):  # noqa: B006 - ComfyUI's signature
            guider = executor.class_obj
            run = patching.current_run(model_options)
            if not census:
                census.append(Census(guider.model_patcher, motion_model))
                census[0].remember()
                census[0].point("loaded, before the first gradient pass")
            gradient.attention_gradient(run, guider.inner_model, guider.conds["positive"], x, timestep,
                                             model_options, ("up_blocks.1",), loss_fn)
            if len(census[0].rows) == 1:
                census[0].point("after the first gradient pass")
            return executor(x, timestep, model_options, seed)

        probed = patched.clone()
        probed.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, "weight_copies", predict_noise)
        generator = torch.Generator().manual_seed(2)
        positive = [[torch.randn(1, 77, context_dim, generator=generator), {}]]
        negative = [[torch.randn(1, 77, context_dim, generator=generator), {}]]
        latent = {"samples": torch.zeros(args.frames, 4, args.size // 8, args.size // 8)}
        _reset_peak()
        comfyui.node("KSampler")().sample(
            probed, 3, args.steps, 7.5, "ddim", "ddim_uniform", positive, negative, latent
        )
        census[0].point("after sampling")
        comfy.model_management.unload_all_models()
        census[0].point("after ComfyUI unloaded the models")
    return census[0]


def start():
    sys.path.insert(0, os.path.join(PACK_ROOT, "tests", "integration"))
    sys.path.insert(0, os.path.join(PACK_ROOT, "tests"))
    if PACK_ROOT not in sys.path:
        sys.path.append(PACK_ROOT)  # appended: our nodes/ must not shadow ComfyUI's nodes module
    from comfy_harness import find_comfyui, start_comfyui

    root, reason = find_comfyui()
    if root is None:
        raise SystemExit(f"no ComfyUI: {reason}")
    return start_comfyui(root, tempfile.mkdtemp(prefix="weight_copies_"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-size", action="store_true",
                        help="SD1.5-size UNet (fp16 weights) and v3-size motion module")
    parser.add_argument("--lora", action="store_true", help="a LoRA on the UNet's attention projections")
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--size", type=int, default=64, help="width = height in pixels")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    comfyui = start()
    census = run(comfyui, args)
    kind = ("SD1.5-size UNet + v3-size motion module, fp16 weights" if args.full_size
            else "tiny UNet + motion module, fp32")
    print(f"{kind}{', LoRA' if args.lora else ''}; ComfyUI {comfyui.version}")
    print(census.table())


if __name__ == "__main__":
    main()
