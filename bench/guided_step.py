"""Benchmark: a MotionClone guided step against a plain CFG step, measured in one run.

Runs the real code path (ComfyUI's UNet, our motion modules, 'MotionClone Sampler''s KSAMPLER) on
random weights: a tiny SD1.5-layout UNet by default, or with `--full-size` SD1.5's UNet and a v3-size
motion module (meant for a GPU: 16 frames at 512x512 in fp16). It samples 8 steps, the first 4 guided,
and times steps 1-3 (guided) and 5-7 (plain CFG DDIM) between the sampler's per-step callbacks.

Memory per step: on CUDA the allocator's peak; on CPU the process's peak resident set (sampled every
millisecond) above the level before sampling. "kept for backward" sums the distinct storages autograd
saves during the step other than the weights (which are resident anyway): the activation memory the
gradient pass holds, the part that grows with frames and resolution.

Usage: COMFYUI_PATH=../comfyui/v0.8.0 python bench/guided_step.py [--full-size] [--frames 16 --size 512]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

GUIDED, STEPS = 4, 8
SD15_UNET = {
    "context_dim": 768, "model_channels": 320, "use_linear_in_transformer": False, "adm_in_channels": None,
    "use_temporal_attention": False, "in_channels": 4, "out_channels": 4, "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "transformer_depth_middle": 1,
    "use_spatial_transformer": True, "legacy": False, "image_size": 32,
}


class MemoryMeter:
    """Peak memory between two `lap()` calls: CUDA allocator peak, or sampled RSS on CPU."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.base = self._now()
        self.peak = 0
        if not cuda:
            self._running = True
            threading.Thread(target=self._sample, daemon=True).start()

    def _now(self) -> int:
        import torch

        if self.cuda:
            return torch.cuda.memory_allocated()
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, self._now())
            time.sleep(0.001)

    def lap(self) -> int:
        import torch

        if self.cuda:
            peak = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            peak, self.peak = max(self.peak, self._now()), self._now()
        return peak

    def stop(self):
        self._running = False


def build(args, comfy_modules):
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    import torch
    from testing_pack import TINY_UNET, seeded_weights

    patching, motionclone = comfy_modules
    unet_config = dict(SD15_UNET if args.full_size else TINY_UNET)
    config = comfy.supported_models.SD15(unet_config)
    dtype = torch.float16 if args.cuda else torch.float32
    config.set_inference_dtype(dtype, None)
    model = config.get_model({})
    weights = seeded_weights(model.diffusion_model, 0)
    model.load_model_weights({f"model.diffusion_model.{k}": v for k, v in weights.items()}, "model.diffusion_model.")
    del weights
    patcher = comfy.model_patcher.ModelPatcher(model, comfy.model_management.get_torch_device(),
                                               comfy.model_management.unet_offload_device())
    channels = (320, 640, 1280, 1280) if args.full_size else tuple(32 * m for m in TINY_UNET["channel_mult"])
    motion_model = motionclone.AnimateDiffMotionModel(channels).eval().requires_grad_(False).to(dtype)
    context = torch.randn(1, 77, unet_config["context_dim"])
    weight_bytes = sum(t.numel() * t.element_size() for m in (model, motion_model) for t in m.parameters())
    return patching.apply_motion_model(patcher, patching.wrap_motion_model(motion_model), "sqrt_linear"), context, weight_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-size", action="store_true", help="SD1.5-size UNet and v3-size motion module")
    parser.add_argument("--frames", type=int, default=None, help="frames (default 16 full-size, 4 tiny)")
    parser.add_argument("--size", type=int, default=None, help="width = height in pixels (default 512 full-size, 128 tiny)")
    args = parser.parse_args()
    frames = args.frames or (16 if args.full_size else 4)
    size = args.size or (512 if args.full_size else 128)

    from comfy_harness import find_comfyui, loaded_pack_module, start_comfyui

    root, reason = find_comfyui()
    if root is None:
        sys.exit(f"bench needs a ComfyUI: {reason}")
    start_comfyui(root, tempfile.mkdtemp(prefix="motionclone_bench_"))
    import comfy.sample
    import torch

    args.cuda = torch.cuda.is_available()
    patching = loaded_pack_module("nodes.patching")
    guided_sampling = loaded_pack_module("nodes.guided_sampling")
    guided_step = loaded_pack_module("nodes.guided_step")
    sampler_nodes = loaded_pack_module("nodes.sampler")
    motionclone = loaded_pack_module("motionclone")
    model, context, weight_bytes = build(args, (patching, motionclone))
    conditioning = [[context, {}]]
    negative = [[torch.randn_like(context), {}]]
    latent = torch.zeros(frames, 4, size // 8, size // 8)

    with torch.inference_mode():
        sigma = model.get_model_object("model_sampling").sigmas[400].float().cpu()
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
        probs, family = guided_sampling.reference_attention(model, latent, conditioning, sigma, noise, ("up_blocks.1",))
        layers = tuple(sorted(probs))
        metadata = motionclone.MotionMetadata(frames, size // 8, size // 8, layers, ("up_blocks.1",), 1, 400, family)
        representation = motionclone.top_k_representation(probs, 1, metadata)

        stamps, peaks, saved = [], [], []
        saved_now: dict[int, int] = {}  # storage address -> bytes, so shared storages count once
        weights: set[int] = set()

        def weight_storages() -> set[int]:  # re-read: the first gradient pass replaces inference-mode weights
            modules = (model.model, patching.motion_model_of(model))
            return {t.untyped_storage().data_ptr() for m in modules for t in (*m.parameters(), *m.buffers())}
        meter = MemoryMeter(args.cuda)

        def callback(step, x0, x, total):
            if args.cuda:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
            peaks.append(meter.lap())
            saved.append(sum(saved_now.values()))
            saved_now.clear()
            weights.clear()
            weights.update(weight_storages())

        def pack(tensor):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights:  # weights are resident anyway
                saved_now[storage.data_ptr()] = storage.nbytes()
            return tensor

        sigmas, _ = sampler_nodes.motionclone_sigmas(model, STEPS, GUIDED, 0.3)
        settings = motionclone.GuidanceSettings(2000.0, 0.3, warm_up=0, cool_down=0)
        sampler = guided_sampling.motionclone_ksampler(guided_step.Guidance(representation, settings), motionclone.GuidanceLog())
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            comfy.sample.sample_custom(model, noise, 8.5, sampler, sigmas, conditioning, negative, latent,
                                       callback=callback, disable_pbar=True, seed=0)
        meter.stop()

    base = meter.base
    guided_t = [stamps[i] - stamps[i - 1] for i in range(1, GUIDED)]
    plain_t = [stamps[i] - stamps[i - 1] for i in range(GUIDED + 1, STEPS)]
    guided_mem = max(peaks[1:GUIDED]) - (0 if args.cuda else base)
    plain_mem = max(peaks[GUIDED + 1:]) - (0 if args.cuda else base)
    device = torch.cuda.get_device_name() if args.cuda else f"CPU ({torch.get_num_threads()} threads)"
    kind = "SD1.5-size UNet + v3-size motion module" if args.full_size else "tiny SD1.5-layout UNet + tiny motion module"
    unit = 2**20
    print(f"{kind}, {frames} frames {size}x{size}, {str(next(model.model.parameters()).dtype)}, {device}")
    print(f"guided step: {statistics.median(guided_t):.3f} s   plain CFG step: {statistics.median(plain_t):.3f} s")
    print(f"time ratio guided / plain: {statistics.median(guided_t) / statistics.median(plain_t):.2f}  (target <= 1.6)")
    label = "peak allocated" if args.cuda else "peak RSS above start"
    print(f"{label}: guided {guided_mem / unit:.1f} MiB, plain {plain_mem / unit:.1f} MiB, "
          f"ratio {guided_mem / max(plain_mem, 1):.2f}")
    print(f"weights (UNet + motion module): {weight_bytes / unit:.1f} MiB")
    print(f"kept for backward per guided step: {max(saved[1:GUIDED]) / unit:.1f} MiB; per plain step: {max(saved[GUIDED + 1:]) / unit:.1f} MiB")


if __name__ == "__main__":
    main()
