"""Subjects for location-aware semantic guidance (MotionClone Sec. 3.3, docs/algorithm.md §5): words, masks, settings.

A `SubjectMask` names a subject by the token positions of its word(s) in a prompt, with the settings
that turn that subject's cross-attention into foreground/background weights. The *reference* subject's
mask is computed once from the reference clip (it says where the cloned motion puts the subject); the
*generated* subject's mask is computed at every guided step from the unguided appearance branch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .errors import MotionCloneError
from .masks import (
    generated_subject_weights,
    normalise_per_frame,
    reference_subject_weights,
    subject_attention,
)

SEMANTIC_BLOCKS = ("up_blocks.1", "up_blocks.2")  # v1's blocks; masks are made at up_blocks.1's resolution


def prompt_words(prompt: str) -> list[str]:
    """The words of a prompt as a user reads them (for error messages)."""
    return re.findall(r"[\w'-]+", prompt.lower())


def find_token_positions(
    prompt_tokens: Sequence[int], word_tokens: dict[str, Sequence[int]], prompt: str
) -> tuple[int, ...]:
    """Positions of each word's tokens in the prompt's token sequence (docs/algorithm.md §5).

    Args:
        prompt_tokens: the prompt's token ids, BOS included, as the text encoder sees them.
        word_tokens: word -> its token ids (no BOS/EOS); a word split into several tokens keeps all of them.

    Returns:
        Sorted positions of all tokens of the first occurrence of every word. The official code keeps only
        the first sub-token of one word; averaging all of them describes multi-token words better.

    Raises:
        MotionCloneError listing the prompt's words when a word does not occur in the prompt.
    """
    positions: set[int] = set()
    for word, tokens in word_tokens.items():
        tokens = list(tokens)
        start = next((i for i in range(len(prompt_tokens) - len(tokens) + 1)
                      if tokens and list(prompt_tokens[i:i + len(tokens)]) == tokens), None)
        if start is None:
            raise MotionCloneError(
                f"The subject word '{word}' is not in the prompt \"{prompt}\". Its words are: "
                f"{', '.join(prompt_words(prompt)) or '(none)'}. Use one of them (the exact form, e.g. 'cat' for "
                "'cat', not 'cats'), or add the word to the prompt."
            )
        positions.update(range(start, start + len(tokens)))
    return tuple(sorted(positions))


@dataclass(frozen=True)
class SubjectMask:
    """A subject: its word(s), token positions, mask settings, and (reference only) its weights.

    `foreground`/`background` are `(F, h, w)` weights at up_blocks.1's resolution (latent / 4), present
    when the mask was computed from a source clip; a mask without them is made during sampling.
    """

    words: tuple[str, ...]
    prompt: str
    token_positions: tuple[int, ...]
    threshold: float = 0.3
    blur_kernel_size: int = 1
    blur_sigma: float = 1.0
    centroid_sigma: float = 5.0
    foreground: torch.Tensor | None = field(default=None, repr=False)
    background: torch.Tensor | None = field(default=None, repr=False)
    # `(1, 77, C)`: the first 77 tokens of `prompt` as the text encoder encodes them, to recognise the prompt.
    prompt_encoding: torch.Tensor | None = field(default=None, repr=False)

    @property
    def has_weights(self) -> bool:
        return self.foreground is not None

    def encodes_same_prompt(self, conditioning: torch.Tensor) -> bool:
        """Whether `(1, T, C)` text conditioning starts with this mask's prompt (True when it is not known).

        Only the first 77 tokens count: token positions index that chunk, and a longer prompt
        (ConditioningConcat) keeps it. The tolerance allows the text encoder's dtype and device to differ.
        """
        if self.prompt_encoding is None:
            return True
        ours = self.prompt_encoding.float()
        theirs = conditioning[:1, : ours.shape[1]].float().to(ours.device)
        if theirs.shape != ours.shape:
            return False
        return bool(torch.allclose(theirs, ours, rtol=1e-2, atol=1e-2 * float(ours.abs().max().clamp(min=1e-6))))

    def describe(self) -> str:
        where = (f"{self.foreground.shape[0]} frames at {self.foreground.shape[2]}x{self.foreground.shape[1]} cells"
                 if self.has_weights else "computed while sampling")
        return f"subject '{' '.join(self.words)}' (tokens {list(self.token_positions)}), {where}"

    def attention_map(self, cross_probs: list[torch.Tensor]) -> torch.Tensor:
        """Normalised subject attention `(F, h, w)` from cross-attention `(F, heads, h, w, T)` of several layers."""
        height, width = cross_probs[0].shape[2:4]
        flat = [p.flatten(2, 3) for p in cross_probs]
        return normalise_per_frame(subject_attention(flat, self.token_positions)).unflatten(1, (height, width))

    def reference_weights(self, cross_probs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference subject's `(foreground, background)`: threshold, blur, centroid Gaussian (official M_ex)."""
        return reference_subject_weights(self.attention_map(cross_probs), self.threshold, self.blur_kernel_size,
                                         self.blur_sigma, self.centroid_sigma)

    def generated_weights(self, cross_probs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The generated subject's `(foreground, background)`: threshold and blur (official M_app)."""
        return generated_subject_weights(self.attention_map(cross_probs), self.threshold, self.blur_kernel_size,
                                         self.blur_sigma)


@dataclass(frozen=True)
class SemanticSettings:
    """Location-aware semantic guidance: the two subjects (both or neither) and a weight per block.

    With no subjects the guidance runs in the global mode (camera motion): whole-frame mean keys.
    """

    reference: SubjectMask | None
    subject: SubjectMask | None
    block_weights: tuple[tuple[str, float], ...] = (("up_blocks.1", 500.0), ("up_blocks.2", 0.0))

    def __post_init__(self):
        if (self.reference is None) != (self.subject is None):
            raise MotionCloneError(
                "Semantic guidance needs both masks: 'reference_mask' (the subject in the reference clip) and "
                "'subject_mask' (the subject word of the new prompt). Connect both, or neither for the global "
                "(camera-motion) mode."
            )
        if self.reference is not None and not self.reference.has_weights:
            raise MotionCloneError(
                "'reference_mask' has no mask yet: give its 'MotionClone: Cross-Attention Mask' node a source "
                "(an INVERSION or the reference latent)."
            )
        if self.subject is not None and self.subject.has_weights:
            raise MotionCloneError(
                "'subject_mask' was computed from a source clip, but the new subject's mask comes from the video "
                "being generated. Disconnect the source inputs of that 'Cross-Attention Mask' node."
            )

    @property
    def global_mode(self) -> bool:
        return self.reference is None

    @property
    def weighted_blocks(self) -> tuple[str, ...]:
        return tuple(block for block, weight in self.block_weights if weight > 0)

    @property
    def active(self) -> bool:
        return bool(self.weighted_blocks)

    @property
    def measured_blocks(self) -> tuple[str, ...]:
        """Blocks whose loss is reported: the weighted ones, or up_blocks.1 when all weights are 0."""
        return self.weighted_blocks or (SEMANTIC_BLOCKS[0],)

    def weight_of(self, block: str) -> float:
        return dict(self.block_weights).get(block, 0.0)
