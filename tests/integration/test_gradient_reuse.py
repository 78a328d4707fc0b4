"""Gradient reuse (`gradient_every`) on a real ComfyUI: which steps run the gradient pass, what the others apply."""

from __future__ import annotations

import gc
import json
import math
import weakref

import pytest
import safetensors.torch
import torch
from comfy_harness import loaded_pack_module
from inversion_prompts import semantic_prompt
from prompts import guidance_ksampler_prompt, motionclone_prompt


def _latent(path) -> torch.Tensor:
    return safetensors.torch.load_file(str(path))["samples"]


def _gradient_calls(report) -> list[bool]:
    """Per UNet call of the run: whether it recorded an autograd graph (output block 0 ends with one)."""
    return [call["0"] for call in json.loads(report.read_text())]


class StepRecorder:
    """Wraps the engine's `guided_step` as both faces call it; keeps, per guided evaluation, the plan, the
    gradient handed to the face and (copies of) the gradients the run kept for reuse at that moment."""

    def __init__(self, monkeypatch):
        self.steps: list[dict] = []
        self.kept: list[weakref.ref] = []
        module = loaded_pack_module("nodes.engine.samplers")
        original = module.guided_step

        def recording(guidance, run, *args, **kwargs):
            step = original(guidance, run, *args, **kwargs)
            if step is not None and step.grad is not None:
                reusable = run.guidance.reusable
                self.steps.append({
                    "plan": step.plan, "grad": step.grad.clone(), "reused": step.reused,
                    "kept_index": None if reusable is None else reusable.index,
                    "kept": None if reusable is None else {name: g.clone() for name, g in reusable.terms.items()},
                })
                if reusable is not None:
                    self.kept.extend(weakref.ref(g) for g in reusable.terms.values())
            return step

        monkeypatch.setattr(module, "guided_step", recording)

    def check_weights_applied_to_the_kept_gradients(self, every: int) -> None:
        """Every guided step's gradient is, exactly, its own weights times the gradients of the last computing
        step (its own on a computing step); a reusing step keeps those gradients untouched."""
        last_computed = None
        for step in self.steps:
            plan, kept = step["plan"], step["kept"]
            assert step["reused"] == (plan.index % every != 0)
            if not step["reused"]:
                assert step["kept_index"] == plan.index
                last_computed = kept
            else:
                assert step["kept_index"] == plan.index - plan.index % every
                assert kept.keys() == last_computed.keys()
                assert all(torch.equal(kept[name], last_computed[name]) for name in kept)
            expected = plan.motion_scale * kept["motion"]
            if "semantic" in kept:
                expected = expected + plan.semantic_scale * kept["semantic"]
            assert torch.equal(step["grad"], expected), f"guided step {plan.index}"


def test_gradient_every_1_is_the_graph_without_the_input(comfyui, tmp_path):
    runs = {}
    for every in (None, 1):
        prompt = motionclone_prompt(str(tmp_path / f"{every}.safetensors"), steps=8, guided_steps=5)
        if every is not None:
            prompt["sample"]["inputs"]["gradient_every"] = every
        outputs = comfyui.run_prompt(prompt)
        runs[every] = (_latent(tmp_path / f"{every}.safetensors"), outputs["sample"])
    assert torch.equal(runs[None][0], runs[1][0])
    assert runs[None][1]["motion_loss"] == runs[1][1]["motion_loss"]
    assert runs[1][1]["gradient_reused"] == [False] * 5


@pytest.mark.parametrize("every", [2, 3])
def test_sampler_runs_the_gradient_pass_on_every_nth_guided_step(comfyui, tmp_path, monkeypatch, every):
    recorder = StepRecorder(monkeypatch)
    report = tmp_path / "graph.json"
    prompt = motionclone_prompt(str(tmp_path / "x.safetensors"), steps=8, guided_steps=5, graph_report=str(report))
    # warm-up and cool-down over 2 steps: the weights of a reusing step differ from its computing step's
    prompt["sample"]["inputs"].update({"gradient_every": every, "warm_up_steps": 2, "cool_down_steps": 2})
    outputs = comfyui.run_prompt(prompt)

    computing = [i % every == 0 for i in range(5)]
    calls = _gradient_calls(report)
    # guided steps: the conditional call (with a graph when computing) and the unconditional one; 3 plain steps
    assert len(calls) == 2 * 5 + 3
    assert calls[0:10:2] == computing and not any(calls[1:10:2]) and not any(calls[10:])
    assert outputs["sample"]["gradient_reused"] == [not c for c in computing]
    losses = outputs["sample"]["motion_loss"]
    # measured on reusing steps too
    assert len(losses) == 5 and all(math.isfinite(loss) and loss > 0 for loss in losses)
    assert f"Gradient passes at {sum(computing)} of 5 guided steps" in outputs["sample"]["text"][0]

    assert [s["plan"].index for s in recorder.steps] == list(range(5))
    assert recorder.steps[1]["plan"].motion_scale != recorder.steps[0]["plan"].motion_scale
    recorder.check_weights_applied_to_the_kept_gradients(every)
    gc.collect()
    assert recorder.kept and all(ref() is None for ref in recorder.kept)  # released with the run


def test_reuse_with_semantic_guidance_weighs_each_term_by_the_step(comfyui, tmp_path, monkeypatch):
    recorder = StepRecorder(monkeypatch)
    prompt = semantic_prompt(str(tmp_path / "x.safetensors"), semantic_weight=500.0, motion_weight=2000.0,
                             steps=6, guided_steps=4)
    prompt["sample"]["inputs"].update({"gradient_every": 2, "warm_up_steps": 2, "cool_down_steps": 3})
    outputs = comfyui.run_prompt(prompt)
    assert outputs["sample"]["gradient_reused"] == [False, True, False, True]
    assert len(outputs["sample"]["semantic_loss"]) == 4
    plans = [s["plan"] for s in recorder.steps]
    # the cool-down weighs motion only: the two terms' ratio changes between computing and reusing steps
    assert plans[2].motion_scale / plans[2].semantic_scale != plans[3].motion_scale / plans[3].semantic_scale
    assert all(s["kept"].keys() == {"motion", "semantic"} for s in recorder.steps)
    recorder.check_weights_applied_to_the_kept_gradients(2)


@pytest.mark.parametrize("sampler", ["ddim", "dpm_2"])
def test_guidance_with_a_stock_ksampler_reuses_between_gradient_passes(comfyui, tmp_path, monkeypatch, sampler):
    """dpm_2 also evaluates the model at a sigma between two of the schedule's: unguided, it counts no step."""
    recorder = StepRecorder(monkeypatch)
    report = tmp_path / "graph.json"
    prompt = guidance_ksampler_prompt(str(tmp_path / "x.safetensors"), str(tmp_path / "loss.json"), weight=2000.0,
                                      steps=8)
    prompt["guidance"]["inputs"].update({"gradient_every": 2, "warm_up_steps": 3, "cool_down_steps": 1})
    prompt["graph"] = {"class_type": "MotionCloneTestGraphProbe",
                       "inputs": {"model": ["probe", 0], "report_path": str(report)}}
    prompt["sample"]["inputs"].update({"model": ["graph", 0], "sampler_name": sampler})
    comfyui.run_prompt(prompt)

    plans = [s["plan"] for s in recorder.steps]
    assert [p.index for p in plans] == [0, 1, 2, 3] and plans[0].guided_steps == 4  # guided_fraction 0.5 of 8 steps
    assert [s["reused"] for s in recorder.steps] == [False, True, False, True]
    assert sum(_gradient_calls(report)) == 2
    recorder.check_weights_applied_to_the_kept_gradients(2)
    assert torch.isfinite(_latent(tmp_path / "x.safetensors")).all()
