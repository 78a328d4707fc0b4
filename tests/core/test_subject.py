"""Subject words, semantic-guidance settings and the combined step weights."""

from __future__ import annotations

import pytest
import torch

from motionclone import CombinedWeights, GuidanceRamp, MotionCloneError
from motionclone.subject import SemanticSettings, SubjectMask, find_token_positions

PROMPT = [49406, 320, 2368, 11, 4, 3042, 49407]  # BOS a zorb lax ian cat EOS (ids are illustrative)


def test_multi_token_word_uses_all_its_tokens():
    assert find_token_positions(PROMPT, {"zorblaxian": [2368, 11, 4]}, "a zorblaxian cat") == (2, 3, 4)


def test_several_words_are_merged_and_sorted():
    assert find_token_positions(PROMPT, {"cat": [3042], "a": [320]}, "a zorblaxian cat") == (1, 5)


def test_first_occurrence_only():
    assert find_token_positions([49406, 3042, 320, 3042, 49407], {"cat": [3042]}, "cat a cat") == (1,)


def test_absent_word_lists_the_prompts_words():
    with pytest.raises(MotionCloneError, match=r"'dog' is not in the prompt \"A zorblaxian cat\".*a, zorblaxian, cat"):
        find_token_positions(PROMPT, {"dog": [1929]}, "A zorblaxian cat")


def test_partial_match_is_not_a_match():
    with pytest.raises(MotionCloneError, match="'zorblaxians' is not in the prompt"):
        find_token_positions(PROMPT, {"zorblaxians": [2368, 11, 4, 82]}, "a zorblaxian cat")


def _mask(with_weights: bool) -> SubjectMask:
    weights = (torch.ones(2, 3, 3), torch.zeros(2, 3, 3)) if with_weights else (None, None)
    return SubjectMask(("cat",), "a cat", (2,), foreground=weights[0], background=weights[1])


def test_settings_need_both_masks_or_neither():
    with pytest.raises(MotionCloneError, match="needs both masks"):
        SemanticSettings(_mask(True), None)
    assert SemanticSettings(None, None).global_mode


def test_reference_needs_a_source_and_subject_must_not_have_one():
    with pytest.raises(MotionCloneError, match="'reference_mask' has no mask yet"):
        SemanticSettings(_mask(False), _mask(False))
    with pytest.raises(MotionCloneError, match="'subject_mask' was computed from a source clip"):
        SemanticSettings(_mask(True), _mask(True))


def test_measured_blocks_fall_back_to_up_blocks_1_when_all_weights_are_zero():
    off = SemanticSettings(None, None, (("up_blocks.1", 0.0), ("up_blocks.2", 0.0)))
    assert not off.active and off.measured_blocks == ("up_blocks.1",)
    both = SemanticSettings(None, None, (("up_blocks.1", 400.0), ("up_blocks.2", 200.0)))
    assert both.weighted_blocks == ("up_blocks.1", "up_blocks.2") and both.weight_of("up_blocks.2") == 200.0


def test_combined_weights_warm_up_the_semantic_term_without_cooling_it_down():
    weights = CombinedWeights(GuidanceRamp(2000.0, 6, warm_up=2, cool_down=3), semantic_weight=1.0)
    assert [weights.semantic_scale(i) for i in range(7)] == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    assert [weights.motion.scale(i) for i in range(7)] == [1000.0, 2000.0, 2000.0, 2000.0, 2000 * 2 / 3, 2000 / 3, 0.0]
    assert weights.scale(5) == pytest.approx(2000 / 3 + 1.0)
    motion_only = CombinedWeights(GuidanceRamp(0.0, 6, 2, 3))
    assert all(motion_only.scale(i) == 0.0 for i in range(7))  # weight 0: no step is guided
