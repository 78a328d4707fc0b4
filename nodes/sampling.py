"""MotionClone's guided sampler, its schedule as SIGMAS, and the model-patch form of the guidance."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..motionclone.memory import AUTO, MEMORY_MODES
from .engine.checks import is_guided
from .engine.samplers import GuidanceRequest, guided_model, motionclone_sigmas, sample_guided
from .types import MotionSocket, SemanticGuidanceSocket

SAMPLER_NODE, GUIDANCE_NODE = "MotionClone Sampler", "MotionClone: Guidance"  # display names, also in refusals
CFG_TOOLTIP = ("Classifier-free guidance in ComfyUI's convention: uncond + cfg * (cond - uncond). The official "
               "code writes cond + s * (cond - uncond), so its cfg_scale 7.5 is cfg 8.5 here (cfg = s + 1).")


def _weight_input() -> io.Float.Input:
    return io.Float.Input("motion_weight", default=2000.0, min=0.0, max=100000.0, step=10.0,
                          tooltip="Strength of the motion guidance (lambda; official 2000). 0 turns it off: the result "
                          "is then plain DDIM sampling, and the sampler still reports the motion loss for comparison.")


def _fraction_input() -> io.Float.Input:
    return io.Float.Input("guided_fraction", default=0.3, min=0.01, max=0.99, step=0.01,
                          tooltip="Fraction of the timestep range that is guided, from the noisy end: 0.3 guides "
                          "t = 999..700, where motion is laid down (official 0.3 for camera, 0.4 for object motion).")


def _ramp_inputs() -> list:
    return [
        io.Int.Input("warm_up_steps", default=10, min=0, max=1000,
                     tooltip="The guidance weight rises linearly over the first this many guided steps (official 10)."),
        io.Int.Input("cool_down_steps", default=10, min=0, max=1000,
                     tooltip="The guidance weight falls linearly to 0 over the last this many guided steps "
                     "(official 10)."),
    ]


def _semantic_input() -> io.Input:
    return SemanticGuidanceSocket.Input(
        "semantic_guidance", optional=True, tooltip="From 'MotionClone: Semantic Guidance': keeps the new subject "
        "where the reference subject moved (adds an unguided appearance video: about 2 more UNet passes per guided "
        "step). Unconnected: motion guidance only.")


def _memory_input() -> io.Combo.Input:
    return io.Combo.Input(
        "memory_mode", options=list(MEMORY_MODES), default=AUTO, optional=True,
        tooltip="Memory of the gradient pass of each guided step; the result is the same, bit for bit, in every mode. "
        "fast: keeps every activation for the backward (quickest, most memory). balanced: recomputes the "
        "latent- and half-resolution levels during the backward instead of keeping them (less than half the "
        "memory, a little slower). low: recomputes every layer and, on a GPU, keeps the rest in CPU memory "
        "(least memory, slowest). auto: the fastest mode that fits in the free memory for the MOTION's frames "
        "and size (the choice is logged).")


def _gradient_every_input() -> io.Input:
    return io.Int.Input(
        "gradient_every", default=1, min=1, max=100, optional=True,
        tooltip="Run the gradient pass on every n-th guided step only and reuse its gradient, under each step's "
        "own weights, on the steps in between (as FastVMT does for video motion transfer). 1 = a gradient pass "
        "at every guided step (the official algorithm). Measured on the toy world (8 guided steps), motion "
        "fidelity at n = 1 / 2 / 3: 0.38 / 0.25 / 0.15 with MotionClone Sampler, 0.44 / 0.34 / 0.21 with "
        "Guidance + KSampler ddim, for 0.9-0.97x the sampling time at n = 2 and 3.")


def _schedule_inputs() -> list:
    return [
        io.Int.Input("steps", default=100, min=1, max=1000,
                     tooltip="Total denoising steps (official 100 for camera motion, 300 for object motion)."),
        io.Int.Input("guided_steps", default=-1, min=-1, max=1000,
                     tooltip="How many of the steps are guided; they are packed densely into the guided band. "
                     "-1 = half of steps (official 50 of 100, 180 of 300)."),
        _fraction_input(),
    ]


class MotionCloneSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MotionCloneSampler",
            display_name=SAMPLER_NODE,
            category="MotionClone",
            description="A KSampler for MotionClone: DDIM over the official schedule, with primary temporal-attention "
            "guidance toward the reference motion in the guided (high-noise) steps.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL after 'MotionClone: Apply AnimateDiff' (same motion "
                               "module as for extraction)."),
                io.Int.Input("seed", default=2025, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed. The official code uses the extraction seed here too."),
                *_schedule_inputs(),
                io.Float.Input("cfg", default=8.5, min=0.0, max=100.0, step=0.1, round=0.01, tooltip=CFG_TOOLTIP),
                io.Conditioning.Input("positive", tooltip="The new prompt."),
                io.Conditioning.Input("negative", tooltip="The negative prompt."),
                io.Latent.Input("latent_image", tooltip="Empty latent with the MOTION's size; its batch size is the "
                                "frame count."),
                MotionSocket.Input("motion", tooltip="From 'Extract Motion' or 'Load Motion'."),
                _weight_input(),
                *_ramp_inputs(),
                _semantic_input(),
                _memory_input(),
                _gradient_every_input(),
            ],
            outputs=[io.Latent.Output(tooltip="The generated video latents (decode with VAE Decode).")],
        )

    @classmethod
    def execute(cls, model, seed, steps, guided_steps, guided_fraction, cfg, positive, negative, latent_image,
                motion, motion_weight, warm_up_steps, cool_down_steps, semantic_guidance=None,
                memory_mode=AUTO, gradient_every=1) -> io.NodeOutput:
        out, log, settings, warning = sample_guided(
            model, seed, steps, guided_steps, guided_fraction, cfg, positive, negative, latent_image, motion,
            GuidanceRequest(
                motion_weight, warm_up_steps, cool_down_steps, semantic_guidance, memory_mode, gradient_every
            ),
            SAMPLER_NODE)
        result = latent_image.copy()
        result["samples"] = out
        summary = [warning] if warning else []
        summary.append(_loss_summary("Motion", log.of("motion"), motion_weight > 0))
        if semantic_guidance is not None:
            summary.append(_loss_summary("Semantic", log.of("semantic"), settings.semantic_weight > 0))
        if any(log.reused):
            summary.append(f"Gradient passes at {log.reused.count(False)} of {len(log.reused)} guided steps "
                           f"(gradient_every {gradient_every}); the others reused the last one.")
        return io.NodeOutput(result, ui={"text": ["\n".join(summary)], "motion_loss": log.of("motion"),
                                         "semantic_loss": log.of("semantic"), "gradient_reused": log.reused})


def _loss_summary(name: str, losses: list[float], guided: bool) -> str:
    if not losses:
        return "No guided step ran."
    kind = "guided" if guided else "unguided (weight 0), measured only"
    return (f"{name} loss over {len(losses)} guided steps ({kind}): first {losses[0]:.5f}, "
            f"min {min(losses):.5f}, last {losses[-1]:.5f}")


class MotionCloneScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MotionCloneScheduler",
            display_name="MotionClone: Schedule",
            category="MotionClone",
            description="MotionClone's official timestep schedule as SIGMAS, for SamplerCustom(Advanced) together "
            "with 'MotionClone: Guidance': guided steps packed densely into the high-noise band, the rest below.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL whose noise schedule gives the sigmas."),
                *_schedule_inputs(),
            ],
            outputs=[io.Sigmas.Output()],
        )

    @classmethod
    def execute(cls, model, steps, guided_steps, guided_fraction) -> io.NodeOutput:
        sigmas, _ = motionclone_sigmas(model, steps, guided_steps, guided_fraction)
        return io.NodeOutput(sigmas)


class MotionCloneGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MotionCloneGuidance",
            display_name=GUIDANCE_NODE,
            category="MotionClone",
            description="Adds MotionClone's motion guidance to a MODEL, for any stock sampler (KSampler, "
            "SamplerCustomAdvanced). With the euler/ddim sampler it takes the official guided step exactly; "
            "'MotionClone Sampler' also reproduces the official schedule.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL after 'MotionClone: Apply AnimateDiff'."),
                MotionSocket.Input("motion", tooltip="From 'Extract Motion' or 'Load Motion'."),
                _weight_input(),
                _fraction_input(),
                *_ramp_inputs(),
                _semantic_input(),
                _memory_input(),
                _gradient_every_input(),
            ],
            outputs=[io.Model.Output(tooltip="The MODEL with motion guidance; sample latents of the MOTION's size.")],
        )

    @classmethod
    def execute(cls, model, motion, motion_weight, guided_fraction, warm_up_steps, cool_down_steps,
                semantic_guidance=None, memory_mode=AUTO, gradient_every=1) -> io.NodeOutput:
        patched, warning = guided_model(model, motion, guided_fraction, GuidanceRequest(
            motion_weight, warm_up_steps, cool_down_steps, semantic_guidance, memory_mode, gradient_every),
            GUIDANCE_NODE)
        text = [warning] if warning else []
        if is_guided(model):  # the MODEL as it came in
            text.append("This MODEL already carried 'MotionClone: Guidance'; this node's guidance replaces it "
                        "(one guidance per MODEL).")
        return io.NodeOutput(patched, ui=ui.PreviewText("\n".join(text)) if text else None)


NODES = [MotionCloneSampler, MotionCloneScheduler, MotionCloneGuidance]
