"""Extraction: reading a reference clip through the MODEL (docs/algorithm.md §1, §3, §5).

Every read runs inside a sampling run of the MODEL (`read_model`: a one-step "sampler" that only reads),
so ComfyUI loads, patches and conditions it exactly as for sampling: the reference's temporal attention at
one noise level, at every guided timestep of an inversion, per context window, and the subject's
cross-attention for its mask.
"""

from __future__ import annotations

import dataclasses

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import torch

from ...motionclone import (
    AnimateDiffMotionModel,
    AttentionCapture,
    MotionCloneError,
    MotionMetadata,
    motionclone_timesteps,
    resize_frames,
    resolve_guided_steps,
    stack_timesteps,
    stack_windows,
    top_k_representation,
)
from ...motionclone.layout import MASK_CROSS_BLOCKS
from ...motionclone.subject import find_token_positions
from ...motionclone.validation import require_finite
from .checks import check_frame_limit
from .forwards import capture_attention, capture_forward
from .run import active_windows, current_run, frames_per_forward
from .windows import read_windows


def _reading_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, *, states, read, results: list):
    """A KSAMPLER function that only reads the model, changing nothing.

    For each `(latent, sigma)` of `states` it calls `read(run, guider, x, sigma_batch, model_options)` with x
    the sampler's own noised start (latent None) or `process_latent_in(latent)`.
    """
    guider = model.inner_model
    options = extra_args["model_options"]
    run = current_run(options)
    progress = comfy.utils.ProgressBar(len(states)) if len(states) > 1 else None
    for latent, sigma in states:
        comfy.model_management.throw_exception_if_processing_interrupted()
        start = x if latent is None else guider.inner_model.process_latent_in(latent.to(x))
        results.append(read(run, guider, start, sigma.to(x) * x.new_ones([x.shape[0]]), options))
        if progress is not None:
            progress.update(1)
    return x


def read_model(model, latent: torch.Tensor, conditioning, noise: torch.Tensor, states: list, read) -> list:
    """Run `read` on reference latents inside a sampling run of `model` (so ComfyUI loads, patches and
    conditions it as for sampling); one forward per entry of `states`, see `_reading_sampler`.

    Args:
        latent: `(F, 4, h, w)` LATENT-convention clip whose noised start (with `noise`, at `states[0]`'s
            sigma) is what an entry with latent None reads.
    """
    results: list = []
    sampler = comfy.samplers.KSAMPLER(
        _reading_sampler, extra_options={"states": states, "read": read, "results": results}
    )
    sigma = states[0][1]
    sigmas = torch.stack([sigma, torch.zeros_like(sigma)])
    comfy.sample.sample_custom(
        model, noise, 1.0, sampler, sigmas, conditioning, conditioning, latent, disable_pbar=True
    )
    return results


def reference_attention(model, latent: torch.Tensor, conditioning, sigma: torch.Tensor, noise: torch.Tensor, blocks):
    """Temporal attention of `latent` noised to `sigma` (docs/algorithm.md §1, §3): one forward, stopped early.

    Args:
        model: the AnimateDiff-patched ModelPatcher; latent: `(F, 4, h, w)` VAE latent (unscaled).
        sigma: 0-d noise level; noise: `(F, 4, h, w)` standard normal noise.

    Returns:
        `(probs, model_family)`: layer -> `(h_l * w_l, heads, F, F)` float32.
    """
    def read(run, guider, x, sigma_in, options):
        return (
            capture_attention(run, guider.inner_model, guider.conds["positive"], x, sigma_in, options, blocks),
            run.motion_model.family,
        )

    return read_model(model, latent, conditioning, noise, [(None, sigma)], read)[0]


def extract_motion(model, motion_model: AnimateDiffMotionModel, samples: torch.Tensor, conditioning, source: str,
                   timestep: int, seed: int, blocks: tuple[str, ...], top_k: int, inversion=None, steps: int = 100,
                   guided_steps: int = -1, guided_fraction: float = 0.3) -> tuple:
    """Extract Motion's reading (docs/algorithm.md §1-3): the top-k motion of the reference `samples`
    `(F, 4, h, w)` (VAE latent), at `timestep` with `seed`'s noise, or from `inversion` at every guided step
    of the sampling schedule; per context window when the MODEL has windows. `source` names the input the
    frames came from, for the frame-limit refusal.

    Returns:
        `(representation, note)`: the MOTION and a note for the node's text ("" or where it was read from).
    """
    frames = samples.shape[0]
    per_forward = frames_per_forward(model.model_options, frames)
    check_frame_limit(motion_model, per_forward, source, "Pick at most that many frames of the clip, e.g. with "
                      "'MotionClone: Select Frames' (its 'frames' input) in front of this node, or wire 'MotionClone: "
                      "Context Windows' before this node and the sampler.")
    if top_k > per_forward:
        raise MotionCloneError(
            f"top_k ({top_k}) exceeds the frames of one forward ({per_forward}); use at most {per_forward}."
        )
    samples = comfy.sample.fix_empty_latent_channels(model, samples)
    metadata = MotionMetadata(
        frames=frames, latent_height=samples.shape[-2], latent_width=samples.shape[-1],
        layers=tuple(motion_model.attention_layer_names(blocks)), blocks=blocks, top_k=top_k,
        timestep=timestep, model_family=motion_model.family,
    )
    found = active_windows(model.model_options, frames)
    if found is not None:
        layout, _ = found
        metadata = dataclasses.replace(metadata, window_length=layout.length, window_overlap=layout.overlap,
                                       window_schedule=layout.schedule)
    if inversion is not None:
        return _motion_from_inversion(model, inversion, conditioning, metadata, steps, guided_steps, guided_fraction)
    sigma = model.get_model_object("model_sampling").sigmas[timestep].detach().cpu().float()
    noise = comfy.sample.prepare_noise(samples, seed)
    if found is not None:
        return _windowed_motion(model, samples, conditioning, noise, [(None, sigma)], metadata)[0], ""
    probs, _ = reference_attention(model, samples, conditioning, sigma, noise, blocks)
    return top_k_representation(probs, top_k, metadata), ""


def _motion_from_inversion(model, inversion, conditioning, metadata: MotionMetadata, steps: int, guided_steps: int,
                           guided_fraction: float) -> tuple:
    """Top-k motion at every guided timestep of the sampling schedule, each read from the inverted latent
    nearest to it at that latent's own noise level (v1 reads the reference at the same t, docs/algorithm.md §1)."""
    guided = motionclone_timesteps(steps, resolve_guided_steps(steps, guided_steps), guided_fraction).guided
    nearest = [inversion.nearest(t) for t in guided]
    states = [(inversion.latents[s], inversion.sigmas[s]) for s in nearest]
    blocks = metadata.blocks

    def read(run, guider, x, sigma, options):
        probs = capture_attention(run, guider.inner_model, guider.conds["positive"], x, sigma, options, blocks)
        return top_k_representation(probs, metadata.top_k, metadata)

    latent = inversion.latents[-1]
    if metadata.windowed:
        entries = _windowed_motion(model, latent, conditioning, torch.zeros_like(latent), states, metadata)
    else:
        entries = read_model(model, latent, conditioning, torch.zeros_like(latent), states, read)
    per_step = dataclasses.replace(metadata, timestep=guided[0], timesteps=tuple(guided))
    gap = max(abs(inversion.timesteps[s] - t) for s, t in zip(nearest, guided))
    note = f"; read from inverted latents at most {gap} timesteps away" if gap else ""
    return stack_timesteps(entries, per_step), note


def _windowed_motion(model, latent: torch.Tensor, conditioning, noise: torch.Tensor, states: list,
                     metadata: MotionMetadata) -> list:
    """One windowed representation per entry of `states` (as `read_model` takes them): the top-k motion of
    each context window of `metadata.windows`, read window by window (one window's attention at a time)."""
    windows = [torch.tensor(w) for w in metadata.windows]
    single = dataclasses.replace(metadata, frames=metadata.window_length, window_length=0, window_overlap=0,
                                 window_schedule="", timesteps=())
    layout = dataclasses.replace(metadata, timesteps=())

    def read(run, guider, x, sigma, options):
        entries = read_windows(run, guider, x, sigma, options, metadata.blocks, windows,
                               lambda probs: top_k_representation(probs, metadata.top_k, single))
        return stack_windows(entries, layout)

    return read_model(model, latent, conditioning, noise, states, read)


def reference_latent(images, vae, latent, width: int, height: int, resize: str) -> torch.Tensor:
    """The reference clip as a VAE latent `(F, 4, h, w)`: 'latent' as it is, or 'images' resized and encoded."""
    if latent is not None:
        if images is not None:
            raise MotionCloneError("Connect either 'images' (+ 'vae') or 'latent' as the reference clip, not both.")
        require_finite(latent["samples"], "'latent'", "Encode the reference clip again with VAE Encode.")
        return latent["samples"]
    if images is None:
        raise MotionCloneError("Connect the reference clip: 'images' with a 'vae', or an encoded 'latent'.")
    if vae is None:
        raise MotionCloneError("'images' needs a 'vae' to encode them; connect your checkpoint's VAE.")
    require_finite(
        images, "'images'", "Check the nodes that make the reference frames (a video loader gives 0..1 values)."
    )
    encoded = vae.encode(resize_frames(images[..., :3], width, height, resize))
    require_finite(
        encoded, "The VAE encoding of 'images'", "Use your checkpoint's VAE, or run the VAE in fp32 (--fp32-vae)."
    )
    return encoded


def _token_ids(clip, text: str) -> list[int]:
    """Token ids of `text` as the checkpoint's text encoder sees them: the chunks of 77, BOS/EOS included."""
    tokens = clip.tokenize(text)
    chunks = tokens.get("l") or next(iter(tokens.values()))
    return [int(token) for chunk in chunks for token, *_ in chunk if isinstance(token, int)]


def subject_token_positions(clip, prompt: str, subject: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """`(words, positions)`: the comma-separated `subject` words' token positions in `prompt`."""
    words = tuple(word.strip() for word in subject.split(",") if word.strip())
    if not words:
        raise MotionCloneError("'subject' is empty. Type the subject's word as it appears in the prompt, e.g. 'cat'.")
    prompt_tokens = _token_ids(clip, prompt)
    special = {prompt_tokens[0], prompt_tokens[-1]}  # BOS and the EOS/padding token
    word_tokens = {word: [t for t in _token_ids(clip, word) if t not in special] for word in words}
    return words, find_token_positions(prompt_tokens, word_tokens, prompt)


def _source_state(inversion, latent, timestep: int, seed: int, model):
    """`(clip latent, noise, (latent or None, sigma))` for reading the subject's cross-attention at `timestep`."""
    if inversion is not None:
        if latent is not None:
            raise MotionCloneError("Connect either 'inversion' or 'latent' as the mask's source, not both.")
        entry = inversion.nearest(timestep)
        clip_latent = inversion.latents[entry]
        return clip_latent, torch.zeros_like(clip_latent), (clip_latent, inversion.sigmas[entry])
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    sigma = model.get_model_object("model_sampling").sigmas[timestep].detach().cpu().float()
    return samples, comfy.sample.prepare_noise(samples, seed), (None, sigma)


def _read_cross_attention(run, guider, x, sigma, options) -> list[torch.Tensor]:
    """Cross-attention `(F, heads, h, w, T)` of up_blocks.1's three spatial transformers, forward stopped there."""
    last_module = run.motion_model.last_module_in(("up_blocks.1",))
    capture = AttentionCapture((), stop_after=last_module, cross_blocks=MASK_CROSS_BLOCKS)
    capture_forward(guider.inner_model, guider.conds["positive"], x, sigma, options, capture)
    return [capture.cross_probs[block] for block in MASK_CROSS_BLOCKS]


def read_subject_cross_attention(model, conditioning, inversion, latent, timestep: int, seed: int) -> tuple:
    """`(clip latent, cross)`: the source clip (inversion or latent) read at `timestep`, and the cross-attention
    `(F, heads, h, w, T)` of up_blocks.1's three spatial transformers (`_read_cross_attention`)."""
    clip_latent, noise, state = _source_state(inversion, latent, timestep, seed, model)
    return clip_latent, read_model(model, clip_latent, conditioning, noise, [state], _read_cross_attention)[0]
