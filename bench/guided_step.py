"""Benchmark: a MotionClone guided step against a plain CFG step, per memory mode, measured in one run.

Runs the real code path (ComfyUI's UNet, our motion modules, 'MotionClone Sampler''s KSAMPLER, the memory
modes' object patches) on random weights: a tiny SD1.5-layout UNet by default, or with `--full-size` SD1.5's
UNet and a v3-size motion module. For every size of `--sizes` and every mode of `--modes` it samples 8 steps
(`--steps`), the first 4 guided, and times steps 1-3 (guided) and 5-7 (plain CFG DDIM) between the sampler's
per-step callbacks; it also checks that every mode samples the same latent as fast, bit for bit.

Measured per step:
- "kept for backward": the most bytes autograd holds saved for a backward at once during the step (distinct
  storages, each while any saved tensor holds it), counted exactly by an outer
  `torch.autograd.graph.saved_tensors_hooks`, the weights left out (resident anyway). A
  checkpointed layer's input is counted (the checkpoint saves it), the activations it recomputes in the
  backward are not. On CUDA, low mode moves what it keeps to pinned CPU memory before this hook sees it, so
  there the figure is what stays on the GPU;
- peak memory: on CUDA the allocator's peak (weights included); on CPU the peak of malloc'd bytes (glibc's
  `mallinfo2`, sampled every millisecond) above the level at the end of the previous step: what the step
  allocates on top of the weights and everything else already there.

Times: on CUDA wall time; on a CPU the sampling thread's CPU time (`time.thread_time`: PyTorch runs the
forward and the backward on it with one thread), so that other processes on a shared machine do not count.
On a CPU every forward uses PyTorch's SDPA attention (ComfyUI's default there is its slower split kernel;
the gradient pass always uses SDPA), so that the time ratio compares like with like, as on a GPU.

Extrapolation: kept-for-backward is taken as proportional to frames x latent pixels, with the ratio of the
largest size measured; each smaller size's ratio over it says how well that holds (1.000 = exactly). The
peak above the weights has a part that does not grow with the video: it is extrapolated along the line
through the two largest sizes. It is extrapolated to `--target` (16 frames of 512x512, in the measured dtype), and the
weights (full-size: those measured; tiny: SD1.5 + v3 in the measured dtype) are added for a peak.

Usage: COMFYUI_PATH=~/.cache/motionclone-ci/comfyui-v0.8.0 python bench/guided_step.py
       [--full-size] [--sizes 4x128,8x256] [--modes fast,balanced,low] [--dtype fp32|fp16]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import tempfile
import threading
import time
import weakref
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.append(os.path.dirname(HERE))  # the pack's `motionclone`; appended: its nodes/ must not shadow ComfyUI's

STEPS = 8  # the first half guided
MODES = ("fast", "balanced", "low")
SD15_V3_FP16_WEIGHT_BYTES = 2 * (859_520_964 + 417_137_280)  # UNet + v3 motion module parameters, 2 bytes each
GIB = 2**30
MIB = 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


class MemoryMeter:
    """Peak memory between two `lap()` calls: the CUDA allocator's peak (weights included), or on a CPU the peak
    of the bytes malloc has handed out (glibc's `mallinfo2`, sampled every millisecond) above the level at the
    previous lap: the analogue of the allocator's figure, which the resident set size is not (glibc keeps freed
    memory mapped, so RSS does not fall between runs)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.peak = self.base = 0
        self._running = not cuda
        if not cuda:
            self._mallinfo = ctypes.CDLL("libc.so.6").mallinfo2
            self._mallinfo.restype = _MallInfo2
            self.base = self.peak = self._now()
            threading.Thread(target=self._sample, daemon=True).start()

    def _now(self) -> int:
        info = self._mallinfo()
        return info.uordblks + info.hblkhd

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, self._now())
            time.sleep(0.001)

    def lap(self) -> int:
        """Peak since the last lap: allocated bytes on CUDA; on a CPU, malloc'd bytes above the previous lap's level."""
        import torch

        if self.cuda:
            peak = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            return peak
        now = self._now()
        peak, self.peak, base, self.base = max(self.peak, now), now, self.base, now
        return peak - base

    def stop(self):
        self._running = False


def build(args, engine, motionclone):
    """The motion-patched MODEL, a random prompt embedding, and the weights' bytes."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    import torch
    from model_files import SD15_CHANNELS, SD15_UNET
    from testing_pack import TINY_UNET, seeded_weights

    unet_config = dict(SD15_UNET if args.full_size else TINY_UNET)
    config = comfy.supported_models.SD15(unet_config)
    config.set_inference_dtype(args.torch_dtype, None)
    model = config.get_model({})
    weights = seeded_weights(model.diffusion_model, 0)
    model.load_model_weights({f"model.diffusion_model.{k}": v for k, v in weights.items()}, "model.diffusion_model.")
    del weights
    patcher = comfy.model_patcher.ModelPatcher(model, comfy.model_management.get_torch_device(),
                                               comfy.model_management.unet_offload_device())
    channels = SD15_CHANNELS if args.full_size else tuple(32 * m for m in TINY_UNET["channel_mult"])
    motion_model = motionclone.AnimateDiffMotionModel(channels).eval().requires_grad_(False).to(args.torch_dtype)
    context = torch.randn(1, 77, unet_config["context_dim"])
    weight_bytes = sum(t.numel() * t.element_size() for m in (model, motion_model) for t in m.parameters())
    if not args.cuda:
        # ComfyUI's default attention on a CPU is its split kernel, slower than the SDPA the gradient pass uses:
        # plain forwards get SDPA too, as on a GPU by default.
        transformer_options = patcher.model_options.setdefault("transformer_options", {})
        transformer_options[engine.run.ATTENTION_OVERRIDE_KEY] = pytorch_attention
    motion_patched = engine.motion_model.apply_motion_model(
        patcher, engine.motion_model.wrap_motion_model(motion_model), "sqrt_linear"
    )
    return motion_patched, context, weight_bytes


def pytorch_attention(kernel, *args, **kwargs):
    import comfy.ldm.modules.attention

    return comfy.ldm.modules.attention.attention_pytorch(*args, **kwargs)


def measure(modules, model, context, frames: int, size: int, mode: str, meter: MemoryMeter, cuda: bool,
            steps: int = STEPS) -> dict:
    """Sample `steps` steps (the first half guided) of `frames` x `size`^2 in `mode`; times, peaks, kept bytes,
    the latent. Step 0 of each half is left out of the times (it follows the extraction, or the last guided step)."""
    import comfy.sample
    import torch

    engine, motionclone = modules
    conditioning = [[context, {}]]
    negative = [[torch.randn(context.shape, generator=torch.Generator().manual_seed(1)), {}]]
    latent = torch.zeros(frames, 4, size // 8, size // 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    sigma = model.get_model_object("model_sampling").sigmas[400].float().cpu()
    probs, family = engine.reading.reference_attention(model, latent, conditioning, sigma, noise, ("up_blocks.1",))
    metadata = motionclone.MotionMetadata(frames, size // 8, size // 8, tuple(sorted(probs)), ("up_blocks.1",), 1, 400,
                                          family)
    representation = motionclone.top_k_representation(probs, 1, metadata)
    del probs

    stamps, peaks, saved = [], [], []
    weights: set[int] = set()
    held: dict[int, list[int]] = {}  # storage address -> [bytes, saved tensors holding it]
    live, step_peak = [0], [0]

    def weight_storages() -> set[int]:  # re-read: the first gradient pass replaces inference-mode weights
        modules = (model.model, engine.run.motion_model_of(model))
        return {t.untyped_storage().data_ptr() for m in modules for t in (*m.parameters(), *m.buffers())}

    def callback(step, x0, x, total):
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter() if cuda else time.thread_time())
        peaks.append(meter.lap())
        saved.append(step_peak[0])
        step_peak[0] = live[0]
        weights.clear()
        weights.update(weight_storages())

    def release(address: int) -> None:
        entry = held[address]
        entry[1] -= 1
        if entry[1] == 0:
            del held[address]
            live[0] -= entry[0]

    def pack(tensor):
        """Count a saved tensor's storage while any saved tensor holds it (a finalizer tells when none does)."""
        storage = tensor.untyped_storage()
        address = storage.data_ptr()
        if address in weights:  # weights are resident anyway (a linear layer saves a transposed view of its own)
            return tensor
        entry = held.setdefault(address, [storage.nbytes(), 0])
        if entry[1] == 0:
            live[0] += entry[0]
        entry[1] += 1
        weakref.finalize(tensor, release, address)
        step_peak[0] = max(step_peak[0], live[0])
        return tensor

    guided = steps // 2
    sigmas, _ = engine.samplers.motionclone_sigmas(model, steps, guided, 0.3)
    settings = motionclone.GuidanceSettings(2000.0, 0.3, warm_up=0, cool_down=0)
    guidance = engine.run.Guidance(representation, settings, engine.sampling.SAMPLER_NODE, memory_mode=mode)
    sampler = engine.samplers.motionclone_ksampler(guidance, motionclone.GuidanceLog())
    weights.update(weight_storages())
    meter.lap()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = comfy.sample.sample_custom(engine.memory.with_memory_mode(model, mode), noise, 8.5, sampler, sigmas,
                                         conditioning, negative, latent, callback=callback, disable_pbar=True, seed=0)
    guided_t = [stamps[i] - stamps[i - 1] for i in range(1, guided)]
    plain_t = [stamps[i] - stamps[i - 1] for i in range(guided + 1, steps)]
    return {
        "frames": frames, "size": size, "mode": mode, "latent": out,
        "guided_s": statistics.median(guided_t), "plain_s": statistics.median(plain_t),
        "guided_peak": max(peaks[1:guided]), "plain_peak": max(peaks[guided + 1:]),
        "kept": max(saved[1:guided]), "kept_plain": max(saved[guided + 1:]),
    }


def units(frames: int, size: int) -> int:
    """frames x latent pixels."""
    return frames * (size // 8) ** 2


def report(results: list[dict], args, weight_bytes: int, device: str) -> str:
    kind = ("SD1.5-size UNet + v3-size motion module" if args.full_size
            else "tiny SD1.5-layout UNet + tiny motion module")
    dtype = str(args.torch_dtype).replace("torch.", "")
    peak_label = "peak allocated (weights incl.)" if args.cuda else "peak malloc'd above the step's start"
    lines = [f"{kind}, {dtype}, {device}; weights {weight_bytes / MIB:.1f} MiB", "",
             "| size | mode | guided step s | plain CFG step s | guided / plain | kept for backward MiB | "
             f"{peak_label} MiB, guided / plain | same latent as fast |",
             "|---|---|---|---|---|---|---|---|"]
    fast = {(r["frames"], r["size"]): r["latent"] for r in results if r["mode"] == "fast"}
    for r in results:
        reference = fast.get((r["frames"], r["size"]))
        same = "—" if reference is None or r["mode"] == "fast" else ("yes" if reference.equal(r["latent"]) else "NO")
        lines.append(f"| {r['frames']}x{r['size']}² | {r['mode']} | {r['guided_s']:.3f} | {r['plain_s']:.3f} | "
                     f"{r['guided_s'] / r['plain_s']:.2f} | {r['kept'] / MIB:.1f} | "
                     f"{r['guided_peak'] / MIB:.0f} / {r['plain_peak'] / MIB:.0f} | {same} |")
    target_frames, target_size = args.target
    target = units(target_frames, target_size)
    largest = max(args.sizes, key=lambda fs: units(*fs))
    others = [fs for fs in args.sizes if fs != largest]
    lines += ["", "Proportional to frames x latent pixels, from the largest size measured "
              f"({largest[0]}x{largest[1]}²), "
              f"extrapolated to {target_frames}x{target_size}² {dtype} ({target:,} frame-pixels). How well that holds: "
              "each smaller size's kept bytes per frame-pixel over the largest's (1.000 = exactly proportional).", "",
              "| mode | kept per frame-pixel KiB | smaller sizes / largest | kept at target GiB | peak at target GiB |",
              "|---|---|---|---|---|"]
    full_weights = weight_bytes if args.full_size else SD15_V3_FP16_WEIGHT_BYTES * args.torch_dtype.itemsize // 2
    for mode in args.modes:
        mine = {(r["frames"], r["size"]): r for r in results if r["mode"] == mode}
        big = mine[largest]
        per_unit = big["kept"] / units(*largest)
        checks = ", ".join(f"{f}x{p}²: {mine[(f, p)]['kept'] / units(f, p) / per_unit:.3f}" for f, p in others) or "—"
        # The peak has a part that does not grow with the video (one layer's transients at full width): a line
        # through the two largest sizes, or proportional when only one was measured.
        sizes = sorted(mine, key=lambda fs: units(*fs))[-2:]
        above = [(units(*fs), mine[fs]["guided_peak"] - (weight_bytes if args.cuda else 0)) for fs in sizes]
        slope = ((above[-1][1] - above[0][1]) / (above[-1][0] - above[0][0]) if len(above) > 1
                 else above[0][1] / above[0][0])
        peak_target = above[-1][1] + slope * (target - above[-1][0]) + full_weights
        lines.append(f"| {mode} | {per_unit / 1024:.2f} | {checks} | {per_unit * target / GIB:.2f} | "
                     f"{peak_target / GIB:.2f} |")
    if not args.full_size:
        lines += ["", "Tiny model: its widths are 1/10 of SD1.5's, so its per-frame-pixel figures do not carry over to "
                  "SD1.5; the peak adds SD1.5 + v3 weights only to show the arithmetic. Run --full-size for SD1.5 "
                  "figures."]
    return "\n".join(lines)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        frames, size = item.lower().split("x")
        sizes.append((int(frames), int(size)))
    return sizes


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-size", action="store_true", help="SD1.5-size UNet and v3-size motion module")
    parser.add_argument("--sizes", default=None,
                        help="FRAMESxPIXELS,... (default 4x128,8x256 tiny; 4x128,4x256 full-size)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated memory modes")
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default=None, help="default fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--target", default="16x512", help="FRAMESxPIXELS to extrapolate to")
    parser.add_argument("--steps", type=int, default=STEPS, help="steps per run, the first half guided (at least 4)")
    args = parser.parse_args()
    args.sizes = parse_sizes(args.sizes or ("4x128,4x256" if args.full_size else "4x128,8x256"))
    args.modes = [m.strip() for m in args.modes.split(",")]
    args.target = parse_sizes(args.target)[0]

    from comfy_harness import find_comfyui, loaded_pack_module, start_comfyui

    root, reason = find_comfyui()
    if root is None:
        sys.exit(f"bench needs a ComfyUI: {reason}")
    start_comfyui(root, tempfile.mkdtemp(prefix="motionclone_bench_"))
    import torch

    args.cuda = torch.cuda.is_available()
    args.torch_dtype = {"fp16": torch.float16, "fp32": torch.float32}[args.dtype or ("fp16" if args.cuda else "fp32")]
    engine = SimpleNamespace(**{name: loaded_pack_module(f"nodes.engine.{name}")
                                for name in ("run", "motion_model", "memory", "reading", "samplers")},
                             sampling=loaded_pack_module("nodes.sampling"))
    modules = (engine, loaded_pack_module("motionclone"))
    model, context, weight_bytes = build(args, *modules)
    device = torch.cuda.get_device_name() if args.cuda else f"CPU ({torch.get_num_threads()} threads)"
    meter = MemoryMeter(args.cuda)
    results = []
    with torch.inference_mode():
        for frames, size in args.sizes:
            for mode in args.modes:
                result = measure(modules, model, context, frames, size, mode, meter, args.cuda, args.steps)
                results.append(result)
                print(f"{frames}x{size}² {mode}: guided {result['guided_s']:.3f} s, plain {result['plain_s']:.3f} s, "
                      f"kept {result['kept'] / MIB:.1f} MiB, peak {result['guided_peak'] / MIB:.0f} MiB", flush=True)
    meter.stop()
    print()
    print(report(results, args, weight_bytes, device))
    first = results[0]
    print(f"\ntime ratio guided / plain: {first['guided_s'] / first['plain_s']:.2f}  (target <= 1.6)")
    print(f"kept for backward per guided step: {first['kept'] / MIB:.1f} MiB; "
          f"per plain step: {first['kept_plain'] / MIB:.1f} MiB")


if __name__ == "__main__":
    main()
