"""Test-only ComfyUI nodes: a tiny SD1.5-architecture UNet, random conditioning, a gradient probe.

Loaded by the integration harness next to the pack; never shipped. The tiny UNet is ComfyUI's own
`UNetModel` with the SD1.5 config class and block layout, only narrower (32 base channels), with
seeded weights loaded through `BaseModel.load_model_weights`.
"""

from __future__ import annotations

import json
import os
import sys

import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.supported_models
import safetensors.torch
import torch

TINY_CONTEXT_DIM = 64
TINY_UNET = {
    "context_dim": TINY_CONTEXT_DIM,
    "model_channels": 32,
    "use_linear_in_transformer": False,
    "adm_in_channels": None,
    "use_temporal_attention": False,
    "in_channels": 4,
    "out_channels": 4,
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1,
    "use_spatial_transformer": True,
    "legacy": False,
    "image_size": 32,
}


def seeded_weights(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random weights for `model`'s state dict, scaled by fan-in (ComfyUI's ops leave weights uninitialised)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        if value.numel() == 0 or value.ndim == 0:
            state[key] = value.clone()
        elif value.ndim == 1 and "norm" in key and key.endswith("weight"):
            state[key] = 1.0 + 0.05 * torch.randn(value.shape, generator=generator)
        else:
            fan_in = value[0].numel() if value.ndim > 1 else value.shape[0]
            state[key] = torch.randn(value.shape, generator=generator) * fan_in**-0.5
    return state


WEIGHT_DTYPES = {"default": torch.float32, "fp16": torch.float16, "fp8_e4m3fn": torch.float8_e4m3fn}


class TinySD15:
    """`architecture="SD20"` builds the same tiny UNet under SD2's config class, as a non-SD1.5 MODEL.

    `weight_dtype` stores the weights as UNETLoader's option of that name does: compute in
    `unet_manual_cast` of it, through ComfyUI's manual-cast layers when they differ."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31})},
                "optional": {"architecture": (["SD15", "SD20"],), "output_scale": ("FLOAT", {"default": 1.0}),
                             "weight_dtype": (list(WEIGHT_DTYPES),)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, seed, architecture="SD15", output_scale=1.0, weight_dtype="default"):
        config_class = {"SD15": comfy.supported_models.SD15, "SD20": comfy.supported_models.SD20}[architecture]
        config = config_class(dict(TINY_UNET))
        dtype = WEIGHT_DTYPES[weight_dtype]
        manual_cast = comfy.model_management.unet_manual_cast(dtype, comfy.model_management.get_torch_device())
        config.set_inference_dtype(dtype, manual_cast)
        model = config.get_model({})
        weights = seeded_weights(model.diffusion_model, seed)
        # A random UNet is no denoiser: its eps swings wildly with the input. Scaling the output layer down
        # gives a smooth eps, for tests whose numbers need a well-behaved ODE (inversion round trips).
        weights = {k: v * output_scale if k.startswith("out.2.") else v for k, v in weights.items()}
        model.load_model_weights({f"model.diffusion_model.{k}": v for k, v in weights.items()},
                                 "model.diffusion_model.")
        patcher = comfy.model_patcher.ModelPatcher(
            model, comfy.model_management.get_torch_device(), comfy.model_management.unet_offload_device()
        )
        return (patcher,)


class RandomConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, seed):
        generator = torch.Generator().manual_seed(seed)
        return ([[torch.randn(1, 8, TINY_CONTEXT_DIM, generator=generator), {}]],)


class SaveLatentTo:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "path": ("STRING", {"default": ""})}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def save(self, samples, path):
        safetensors.torch.save_file({"samples": samples["samples"].contiguous()}, path)
        return ()


class SaveMaskTo:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mask": ("MASK",), "path": ("STRING", {"default": ""})}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def save(self, mask, path):
        safetensors.torch.save_file({"mask": mask.contiguous()}, path)
        return ()


def _pack_module(name: str):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
    try:
        from comfy_harness import loaded_pack_module
    finally:
        sys.path.pop(0)
    return loaded_pack_module(name)


class GradientProbe:
    """Adds a PREDICT_NOISE wrapper that takes the gradient of a temporal-attention loss at every step."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "report_path": ("STRING", {"default": ""}),
                             "blocks": ("STRING", {"default": "up_blocks.1"})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "testing"

    def patch(self, model, report_path, blocks):
        gradient, forwards = _pack_module("nodes.engine.gradient"), _pack_module("nodes.engine.forwards")
        patching = _pack_module("nodes.engine.run")
        blocks = tuple(blocks.split(","))
        records = []

        def loss_fn(probs):
            # Pull every row's attention towards its own frame: a loss with a non-trivial gradient.
            return sum(((p - torch.eye(p.shape[-1], device=p.device)) ** 2).mean() for p in probs.values())

        def predict_noise(executor, x, timestep, model_options={}, seed=None):  # noqa: B006 - ComfyUI's signature
            out = executor(x, timestep, model_options, seed)
            guider = executor.class_obj
            run = patching.current_run(model_options)
            conds = guider.conds["positive"]
            later_blocks = []  # the gradient forward must stop after the captured blocks
            hook = guider.inner_model.diffusion_model.output_blocks[6].register_forward_hook(
                lambda *a: later_blocks.append(1)
            )
            try:
                _, loss, grad = gradient.attention_gradient(run, guider.inner_model, conds, x, timestep, model_options,
                                                            blocks, lambda capture: loss_fn(capture.probs))
            finally:
                hook.remove()

            def loss_at(z):
                return loss_fn(
                    forwards.capture_attention(run, guider.inner_model, conds, z, timestep, model_options, blocks)
                ).item()

            step = 1e-2 * grad / grad.norm()
            central_difference = (loss_at(x + step) - loss_at(x - step)) / (2 * step.norm().item())
            records.append({
                "loss": loss.item(),
                "grad_norm": grad.norm().item(),
                "finite": bool(torch.isfinite(grad).all()),
                "grad_shape": list(grad.shape),
                "x_shape": list(x.shape),
                "inference_mode_outside": torch.is_inference_mode_enabled(),
                "frames": run.frames,
                "later_blocks_run": len(later_blocks),
                "directional_derivative": grad.norm().item(),  # <grad, grad/|grad|>
                "central_difference": central_difference,
            })
            with open(report_path, "w") as f:
                json.dump(records, f)
            return out

        patched = model.clone()
        patched.add_wrapper_with_key(
            comfy.patcher_extension.WrappersMP.PREDICT_NOISE, "motionclone_test_probe", predict_noise
        )
        return (patched,)


class MovingSquare:
    """A clip of a bright square moving right on a dark background: frames x height x width x 3 in [0, 1]."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"frames": ("INT", {"default": 4, "min": 1}), "width": ("INT", {"default": 160}),
                             "height": ("INT", {"default": 96})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, frames, width, height):
        clip = torch.full((frames, height, width, 3), 0.1)
        side = height // 3
        for f in range(frames):
            left = f * (width - side) // max(1, frames - 1)
            clip[f, height // 3 : height // 3 + side, left : left + side] = torch.tensor([0.9, 0.7, 0.3])
        return (clip,)


class ToyPingPong:
    """A toy-world clip of any length: a red circle going right for half the clip, then back
    (`motionclone.toyworld.ping_pong_frames`)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"frames": ("INT", {"default": 40, "min": 2}), "speed": ("FLOAT", {"default": 4.5}),
                             "size": ("INT", {"default": 128})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, frames, speed, size):
        return (_pack_module("motionclone.toyworld").ping_pong_frames(frames, speed, size),)


class TinyVAE:
    """ComfyUI's VAE class around a randomly initialised TAESD (the real tiny SD1.5 autoencoder architecture)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}

    RETURN_TYPES = ("VAE",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, seed):
        import comfy.sd

        return (comfy.sd.VAE(sd=tiny_taesd_state(seed)),)


def tiny_taesd_state(seed: int) -> dict[str, torch.Tensor]:
    """A TAESD state dict with random weights, in the layout ComfyUI's VAE class recognises as TAESD."""
    import comfy.taesd.taesd

    state = seeded_weights(comfy.taesd.taesd.TAESD(), seed)
    state.update({"vae_scale": torch.tensor(1.0), "vae_shift": torch.tensor(0.0)})
    return state


class TinyCLIP:
    """ComfyUI's SD1.5 CLIP (real tokenizer, `SDClipModel`) with a 2-layer, 64-wide text transformer."""

    CONFIG = {"hidden_size": TINY_CONTEXT_DIM, "intermediate_size": 128, "num_attention_heads": 2,
              "num_hidden_layers": 2, "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu",
              "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 49407, "pad_token_id": 1,
              "projection_dim": TINY_CONTEXT_DIM}

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, seed):
        import functools

        import comfy.sd
        import comfy.sd1_clip

        class Target:
            params = {
                "clip_model": functools.partial(comfy.sd1_clip.SDClipModel, textmodel_json_config=dict(self.CONFIG))
            }
            clip = comfy.sd1_clip.SD1ClipModel
            tokenizer = comfy.sd1_clip.SD1Tokenizer

        clip = comfy.sd.CLIP(Target())
        clip.cond_stage_model.load_state_dict(seeded_weights(clip.cond_stage_model, seed))
        return (clip,)


class MotionLossProbe:
    """PREDICT_NOISE wrapper recording, at every prediction, sigma and the motion loss of the input latent."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "motion": ("MOTIONCLONE_MOTION",),
                             "report_path": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "testing"

    def patch(self, model, motion, report_path):
        forwards = _pack_module("nodes.engine.forwards")
        patching = _pack_module("nodes.engine.run")
        representation = _pack_module("motionclone.representation")
        records = []

        def predict_noise(executor, x, timestep, model_options={}, seed=None):  # noqa: B006 - ComfyUI's signature
            guider = executor.class_obj
            run = patching.current_run(model_options)
            probs = forwards.capture_attention(run, guider.inner_model, guider.conds["positive"], x, timestep,
                                               model_options, motion.metadata.blocks)
            values, indices = motion.to_device(x.device)
            records.append({"sigma": float(timestep.flatten()[0]),
                            "loss": float(representation.motion_loss(probs, values, indices))})
            with open(report_path, "w") as f:
                json.dump(records, f)
            return executor(x, timestep, model_options, seed)

        patched = model.clone()
        patched.add_wrapper_with_key(
            comfy.patcher_extension.WrappersMP.PREDICT_NOISE, "motionclone_test_loss", predict_noise
        )
        return (patched,)


class InterruptAtCall:
    """DIFFUSION_MODEL wrapper that requests an interrupt when the UNet is called for the n-th time."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "call": ("INT", {"default": 3, "min": 1})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "testing"

    def patch(self, model, call):
        calls = []

        def diffusion_model(executor, *args, **kwargs):
            calls.append(1)
            if len(calls) == call:
                comfy.model_management.interrupt_current_processing(True)
            return executor(*args, **kwargs)

        patched = model.clone()
        patched.add_wrapper_with_key(
            comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "motionclone_test_interrupt", diffusion_model
        )
        return (patched,)


class _ReportingPatch:
    """A test node that patches a MODEL and writes what it sees to a JSON file at report_path."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "report_path": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "testing"


class GraphProbe(_ReportingPatch):
    """DIFFUSION_MODEL wrapper recording, per UNet call, which output blocks end with an autograd graph (last layer)."""

    def patch(self, model, report_path):
        calls = []

        def diffusion_model(executor, *args, **kwargs):
            unet = executor.class_obj
            record = {}
            hooks = [
                unet.output_blocks[i][-1].register_forward_hook(
                    lambda m, a, out, i=i: record.__setitem__(str(i), out.requires_grad)
                )
                for i in range(len(unet.output_blocks))
            ]
            try:
                return executor(*args, **kwargs)
            finally:
                for hook in hooks:
                    hook.remove()
                calls.append(record)
                with open(report_path, "w") as f:
                    json.dump(calls, f)

        patched = model.clone()
        patched.add_wrapper_with_key(
            comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "motionclone_test_graph", diffusion_model
        )
        return (patched,)


class ForeignTemporalLayer:
    """Another pack's temporal layer, as AnimateDiff-Evolved adds its own: an identity layer injected at the end
    of output blocks 3-5 (where up_blocks.1's motion modules sit), run by its own `forward_timestep_embed_patch`
    handler, which records the class of every layer it is handed. `handler_first` puts the handler before the
    MODEL's others (ComfyUI uses the first whose class matches), else after."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "report_path": ("STRING", {"default": ""}),
                             "handler_first": ("BOOLEAN", {"default": False})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "testing"

    class Layer(torch.nn.Module):
        def forward(self, x):
            return x

    def patch(self, model, report_path, handler_first):
        layers = {block: self.Layer() for block in (3, 4, 5)}
        handled = []

        def handler(layer, x, emb, context, transformer_options, *args):
            handled.append(type(layer).__name__)
            with open(report_path, "w") as f:
                json.dump(handled, f)
            return layer(x)

        def inject(patcher):
            for block, layer in layers.items():
                patcher.model.diffusion_model.output_blocks[block].append(layer)

        def eject(patcher):
            for block, layer in layers.items():
                sequence = patcher.model.diffusion_model.output_blocks[block]
                for index, candidate in enumerate(sequence):
                    if candidate is layer:
                        del sequence[index]
                        break

        patched = model.clone()
        patched.set_injections("motionclone_test_foreign", [comfy.patcher_extension.PatcherInjection(inject, eject)])
        options = patched.model_options.setdefault("transformer_options", {})
        patches = options["patches"] = dict(options.get("patches", {}))
        others = list(patches.get("forward_timestep_embed_patch", []))
        entry = (self.Layer, handler)
        patches["forward_timestep_embed_patch"] = [entry, *others] if handler_first else [*others, entry]
        return (patched,)


class MultiGPUClone:
    """The MODEL as ComfyUI's 'MultiGPU Work Units' leaves it on a machine with a second GPU: a clone for that
    device among its additional models, marked as a multi-GPU base clone (here on the same device: a CPU has
    no second one)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "testing"

    def patch(self, model):
        patched = model.clone()
        second = model.clone()
        second.is_multigpu_base_clone = True
        patched.set_additional_models("multigpu", [second])
        return (patched,)


class StepClock(_ReportingPatch):
    """OUTER_SAMPLE wrapper writing, per sampling run, a clock reading at its start and after every step (the
    sampler's per-step callback; CUDA synchronised), the peak CUDA memory allocated in between (0 on a CPU), and
    whether the patcher that samples is the dynamic-VRAM one. A JSON list, one entry per run, at report_path."""

    CALLBACK_POSITION = 5  # outer_sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, ...)

    def patch(self, model, report_path):
        import time

        runs = []

        def outer_sample(executor, *args, **kwargs):
            cuda = torch.cuda.is_available()
            run = {"seconds": [], "peak_bytes": [],
                   "dynamic": getattr(executor.class_obj.model_patcher, "is_dynamic", lambda: False)()}
            runs.append(run)

            def tick():
                if cuda:
                    torch.cuda.synchronize()
                    run["peak_bytes"].append(torch.cuda.max_memory_allocated())
                    torch.cuda.reset_peak_memory_stats()
                else:
                    run["peak_bytes"].append(0)
                run["seconds"].append(time.perf_counter())

            args = list(args)
            given = args[self.CALLBACK_POSITION] if len(args) > self.CALLBACK_POSITION else kwargs.get("callback")

            def callback(*a, **k):
                tick()
                return given(*a, **k) if given is not None else None

            if len(args) > self.CALLBACK_POSITION:
                args[self.CALLBACK_POSITION] = callback
            else:
                kwargs["callback"] = callback
            if cuda:
                torch.cuda.reset_peak_memory_stats()  # the run's peak, not an earlier one's
            tick()
            try:
                return executor(*args, **kwargs)
            finally:
                with open(report_path, "w") as f:
                    json.dump(runs, f)

        patched = model.clone()
        patched.add_wrapper_with_key(
            comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, "motionclone_test_clock", outer_sample
        )
        return (patched,)


class Poison:
    """Puts one NaN into an IMAGE, LATENT or CONDITIONING: what a broken upstream node hands on."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {},
                "optional": {"image": ("IMAGE",), "latent": ("LATENT",), "conditioning": ("CONDITIONING",)}}

    RETURN_TYPES = ("IMAGE", "LATENT", "CONDITIONING")
    FUNCTION = "poison"
    CATEGORY = "testing"

    def poison(self, image=None, latent=None, conditioning=None):
        def with_nan(tensor):
            tensor = tensor.clone()
            tensor.view(-1)[0] = float("nan")
            return tensor

        return (with_nan(image) if image is not None else None,
                {**latent, "samples": with_nan(latent["samples"])} if latent is not None else None,
                [[with_nan(c), dict(extras)] for c, extras in conditioning] if conditioning is not None else None)


NODE_CLASS_MAPPINGS = {
    "MotionCloneTestPoison": Poison,
    "MotionCloneTestTinySD15": TinySD15,
    "MotionCloneTestRandomConditioning": RandomConditioning,
    "MotionCloneTestSaveLatent": SaveLatentTo,
    "MotionCloneTestSaveMask": SaveMaskTo,
    "MotionCloneTestGradientProbe": GradientProbe,
    "MotionCloneTestMovingSquare": MovingSquare,
    "MotionCloneTestToyPingPong": ToyPingPong,
    "MotionCloneTestTinyVAE": TinyVAE,
    "MotionCloneTestTinyCLIP": TinyCLIP,
    "MotionCloneTestMotionLossProbe": MotionLossProbe,
    "MotionCloneTestInterruptAtCall": InterruptAtCall,
    "MotionCloneTestGraphProbe": GraphProbe,
    "MotionCloneTestForeignTemporalLayer": ForeignTemporalLayer,
    "MotionCloneTestMultiGPUClone": MultiGPUClone,
    "MotionCloneTestStepClock": StepClock,
}
