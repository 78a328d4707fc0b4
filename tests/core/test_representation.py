"""Top-k motion representation, the motion loss, and motion files."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from motionclone import (
    MotionCloneError,
    MotionFileError,
    MotionMetadata,
    MotionMismatchError,
    index_dtype_for,
    load_motion,
    motion_loss,
    save_motion,
    stack_timesteps,
    top_k_representation,
)

LAYERS = tuple(
    f"up_blocks.1.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.{i}" for i in (0, 1)
)


def _metadata(frames=6, k=1, layers=LAYERS, timesteps=()) -> MotionMetadata:
    return MotionMetadata(frames=frames, latent_height=8, latent_width=12, layers=layers, blocks=("up_blocks.1",),
                          top_k=k, timestep=400, model_family="AnimateDiff v3 SD1.5", timesteps=timesteps)


def _probs(seed: int, frames=6, positions=6, heads=8, layers=LAYERS) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.softmax(3 * torch.randn(positions, heads, frames, frames, generator=generator), -1)
        for name in layers
    }


@pytest.mark.parametrize("k", [1, 2, 6])
def test_top_k_keeps_the_largest_entries_along_key_frames(k):
    probs = _probs(0)
    rep = top_k_representation(probs, k, _metadata(k=k))
    for name, p in probs.items():
        order = torch.argsort(p, dim=-1, descending=True)[..., :k]
        assert torch.equal(rep.indices[name].long(), order)
        assert torch.equal(rep.values[name], torch.gather(p, -1, order).half())
        assert rep.values[name].dtype == torch.float16 and rep.indices[name].dtype == torch.uint8
        assert rep.values[name].shape == (6, 8, 6, k)


def test_top_1_is_max_and_argmax():
    probs = _probs(1)
    rep = top_k_representation(probs, 1, _metadata())
    for name, p in probs.items():
        assert torch.equal(rep.values[name][..., 0], p.max(-1).values.half())
        assert torch.equal(rep.indices[name][..., 0].long(), p.argmax(-1))


def test_index_dtype_is_the_smallest_that_fits():
    assert index_dtype_for(16) == torch.uint8 and index_dtype_for(256) == torch.uint8
    assert index_dtype_for(257) == torch.int16 and index_dtype_for(2**15 + 1) == torch.int32


def test_size_of_the_official_setting():
    """16 frames at 512x512, up_blocks.1 (16x16 positions, 8 heads, 6 layers), k = 1: 576 KiB (docs/algorithm.md §3)."""
    layers = tuple(f"layer{i}" for i in range(6))
    probs = {name: torch.full((256, 8, 16, 16), 1 / 16) for name in layers}
    rep = top_k_representation(probs, 1, _metadata(frames=16, layers=layers))
    assert rep.nbytes() == 576 * 1024


def _direct_loss(probs, rep) -> torch.Tensor:
    """sum_m ||M o (A_gen - A_ref)||^2 / |M|, with M the one-hot mask of the stored entries."""
    total = torch.zeros((), dtype=torch.float64)
    for name, p in probs.items():
        mask = torch.zeros_like(p, dtype=torch.float64)
        reference = torch.zeros_like(p, dtype=torch.float64)
        mask.scatter_(-1, rep.indices[name].long(), 1.0)
        reference.scatter_(-1, rep.indices[name].long(), rep.values[name].double())
        total += (mask * (p.double() - reference) ** 2).sum() / mask.sum()
    return total


@pytest.mark.parametrize("k", [1, 3])
def test_loss_matches_the_direct_formula(k):
    rep = top_k_representation(_probs(2), k, _metadata(k=k))
    generated = _probs(3)
    values, indices = rep.to_device(torch.device("cpu"))
    assert motion_loss(generated, values, indices).item() == pytest.approx(
        _direct_loss(generated, rep).item(), rel=1e-6
    )


def test_loss_is_zero_for_identical_attention():
    probs = {name: p.half().float() for name, p in _probs(4).items()}  # exactly representable in fp16
    values, indices = top_k_representation(probs, 2, _metadata(k=2)).to_device(torch.device("cpu"))
    assert motion_loss(probs, values, indices).item() == 0.0


def test_a_small_gradient_step_lowers_the_loss():
    values, indices = top_k_representation(_probs(5), 1, _metadata()).to_device(torch.device("cpu"))
    logits = torch.randn(6, 8, 6, 6, generator=torch.Generator().manual_seed(6), requires_grad=True)

    def loss_of(z):
        return motion_loss({name: torch.softmax(z + i, -1) for i, name in enumerate(LAYERS)}, values, indices)

    loss = loss_of(logits)
    (grad,) = torch.autograd.grad(loss, logits)
    assert loss_of(logits.detach() - 0.5 * grad / grad.norm()).item() < loss.item()


def test_save_load_round_trip_is_exact(tmp_path):
    rep = top_k_representation(_probs(7), 2, _metadata(k=2))
    path = str(tmp_path / "motion.safetensors")
    save_motion(rep, path)
    loaded = load_motion(path)
    assert loaded.metadata == rep.metadata
    for name in LAYERS:
        assert torch.equal(loaded.values[name], rep.values[name]) and loaded.values[name].dtype == torch.float16
        assert torch.equal(loaded.indices[name], rep.indices[name]) and loaded.indices[name].dtype == torch.uint8


def _saved(tmp_path) -> str:
    path = str(tmp_path / "motion.safetensors")
    save_motion(top_k_representation(_probs(8), 1, _metadata()), path)
    return path


def _rewrite(path: str, tensors=None, **header_changes) -> str:
    with safetensors.safe_open(path, framework="pt") as handle:
        header = dict(handle.metadata())
        original = {key: handle.get_tensor(key) for key in handle.keys()}
    header.update(header_changes)
    out = path.replace(".safetensors", "_changed.safetensors")
    safetensors.torch.save_file(tensors if tensors is not None else original, out, metadata=header)
    return out


def test_newer_format_asks_for_an_update(tmp_path):
    path = _rewrite(_saved(tmp_path), **{"motionclone.format": "4"})
    with pytest.raises(MotionFileError, match="format 4.*Update the ComfyUI-MotionClone node pack"):
        load_motion(path)


def test_truncated_file_is_reported_as_damaged(tmp_path):
    path = _saved(tmp_path)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-100])
    with pytest.raises(MotionFileError, match="motion.safetensors' cannot be read"):
        load_motion(path)


def test_other_safetensors_files_are_not_motion_files(tmp_path):
    path = str(tmp_path / "weights.safetensors")
    safetensors.torch.save_file({"w": torch.zeros(2)}, path)
    with pytest.raises(MotionFileError, match="not a MotionClone motion file"):
        load_motion(path)


def test_missing_layer_tensor_is_damage(tmp_path):
    path = _saved(tmp_path)
    tensors = safetensors.torch.load_file(path)
    del tensors[f"{LAYERS[1]}.indices"]
    with pytest.raises(MotionFileError, match="damaged"):
        load_motion(_rewrite(path, tensors))


def test_out_of_range_indices_are_damage(tmp_path):
    path = _saved(tmp_path)
    tensors = safetensors.torch.load_file(path)
    tensors[f"{LAYERS[0]}.indices"][0, 0, 0, 0] = 6
    with pytest.raises(MotionFileError, match="out of range"):
        load_motion(_rewrite(path, tensors))


def test_metadata_header_is_readable_json(tmp_path):
    with safetensors.safe_open(_saved(tmp_path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["motionclone.metadata"])
    assert meta == {"frames": 6, "latent_height": 8, "latent_width": 12, "layers": list(LAYERS),
                    "blocks": ["up_blocks.1"], "top_k": 1, "timestep": 400, "model_family": "AnimateDiff v3 SD1.5",
                    "timesteps": []}


def test_several_videos_in_one_forward_are_each_compared_with_the_motion():
    values, indices = top_k_representation(_probs(9), 1, _metadata()).to_device(torch.device("cpu"))
    a, b = _probs(10), _probs(11)
    both = {name: torch.cat([a[name], b[name]]) for name in LAYERS}
    expected = (motion_loss(a, values, indices) + motion_loss(b, values, indices)) / 2
    assert motion_loss(both, values, indices).item() == pytest.approx(expected.item(), rel=1e-6)


def test_attention_of_another_size_is_refused():
    values, indices = top_k_representation(_probs(12), 1, _metadata()).to_device(torch.device("cpu"))
    with pytest.raises(MotionCloneError, match="does not fit"):
        motion_loss(_probs(13, positions=4), values, indices)


def _per_timestep(timesteps=(999, 950, 900), k=2):
    probs = [_probs(20 + i) for i in range(len(timesteps))]
    entries = [top_k_representation(p, k, _metadata(k=k)) for p in probs]
    return probs, stack_timesteps(entries, _metadata(k=k, timesteps=timesteps))


def test_per_timestep_entries_equal_single_representations_of_each_step():
    probs, rep = _per_timestep()
    for entry, t in enumerate((999, 950, 900)):
        single = top_k_representation(probs[entry], 2, _metadata(k=2))
        values, indices = rep.to_device(torch.device("cpu"), timestep=t)
        for name in LAYERS:
            assert rep.values[name].shape == (3, 6, 8, 6, 2)
            assert torch.equal(values[name], single.values[name].float())
            assert torch.equal(indices[name], single.indices[name].long())


def test_per_timestep_lookup_of_a_missing_timestep_names_the_fix():
    _, rep = _per_timestep()
    assert rep.entry_for(950) == 1
    with pytest.raises(MotionMismatchError,
                       match=r"3 guided timesteps \(t=999..900\).*t=800.*same steps, guided_steps"):
        rep.to_device(torch.device("cpu"), timestep=800)


def test_single_timestep_representation_ignores_the_sampling_timestep():
    rep = top_k_representation(_probs(30), 1, _metadata())
    assert rep.entry_for(123) is None
    values, _ = rep.to_device(torch.device("cpu"), timestep=123)
    assert torch.equal(values[LAYERS[0]], rep.values[LAYERS[0]].float())


def test_per_timestep_round_trip_and_shape_check(tmp_path):
    _, rep = _per_timestep()
    path = str(tmp_path / "motion.safetensors")
    save_motion(rep, path)
    loaded = load_motion(path)
    assert loaded.metadata == rep.metadata and loaded.metadata.timesteps == (999, 950, 900)
    assert all(torch.equal(loaded.values[n], rep.values[n]) and torch.equal(loaded.indices[n], rep.indices[n])
               for n in LAYERS)
    tensors = safetensors.torch.load_file(path)
    tensors[f"{LAYERS[0]}.values"] = tensors[f"{LAYERS[0]}.values"][:2]
    tensors[f"{LAYERS[0]}.indices"] = tensors[f"{LAYERS[0]}.indices"][:2]
    with pytest.raises(MotionFileError, match=r"expected \(3, positions, heads, 6, 2\)"):
        load_motion(_rewrite(path, tensors))


def test_format_1_files_still_load(tmp_path):
    path = _rewrite(_saved(tmp_path), **{"motionclone.format": "1"})
    loaded = load_motion(path)
    assert loaded.metadata.timesteps == () and loaded.metadata.format_version == 1
