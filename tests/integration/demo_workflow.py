"""The one-minute CPU demo's graph: workflow 0 (UI format, `workflow()`) and the same graph as an API prompt.

The demo: the bundled toy model and reference clip; the reference's motion re-drawn with a new prompt,
unguided (plain AnimateDiff, stock KSampler) and cloned (Extract Motion -> MotionClone Sampler) from the
same seed; reference | unguided | cloned side by side, saved as an animated WEBP. `bench/make_demo_workflow.py`
writes `workflows/0-try-it-on-cpu.json` from it, `bench/demo_cpu.py` runs it, and `test_toy_demo.py` checks both.
"""

from __future__ import annotations

import os

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKFLOW_FILE = os.path.join(PACK_ROOT, "workflows", "0-try-it-on-cpu.json")

SEED, STEPS, GUIDED_STEPS, GUIDED_FRACTION, CFG, WEIGHT, RAMP = 1, 20, 8, 0.4, 7.5, 2000.0, 2
REFERENCE_CLIP, NEW_PROMPT = "red circle moving right", "a blue square"

NOTE = "\n".join([
    "MotionClone on a CPU in a minute: the toy model",
    "Everything here ships with the pack: a toy video model (an SD1.5-architecture UNet at toy size with an "
    "AnimateDiff v3-layout motion module, under 10 MB) trained on a toy world of one coloured shape moving on a "
    "dark background, and reference clips from that world. No downloads.",
    "",
    "What to change",
    "1. Toy Reference Clip: pick the motion to clone.",
    '2. New prompt: another colour and shape, e.g. "a green triangle" (colours: red, green, blue, yellow, cyan, '
    "magenta, orange, white; shapes: circle, square, triangle).",
    "3. Run. The saved animation shows reference | unguided | cloned: the unguided video's blob flickers or stays "
    "put, the cloned one moves with the reference.",
    "",
    "What the toy model can and cannot do: it draws soft-edged blobs on a dark background and moves them with "
    "MotionClone's guidance; it follows the prompt's colour and shape only weakly (18 minutes of training on one "
    "CPU core), so judge the motion, not the subject.",
    "",
    f"Settings: {STEPS} steps, {GUIDED_STEPS} of them guided in the noisiest {int(GUIDED_FRACTION * 100)} % "
    f"(guided_fraction {GUIDED_FRACTION}), cfg {CFG}, motion_weight {int(WEIGHT)}, reference read at timestep 400, "
    f"seed {SEED} everywhere. The real workflows (1-5) use SD1.5 with the official settings.",
    "",
    "VRAM: none needed; runs on a CPU (8 frames of 128x128). Time: about a minute on 2 CPU cores.",
])


CONTROL = "control_after_generate"  # a frontend-only widget after seeds; not sent to the server
STITCH = [("direction", "right"), ("match_image_size", True), ("spacing_width", 0), ("spacing_color", "white")]


def graph_specs():
    """(nodes, wires): nodes as (id, type, pos, size, widgets [(name, value)], inputs [(name, type)],
    outputs [(name, type)]); wires as (from id, from slot, to id, input name)."""
    # Sizes hold at least what the frontend computes for a node's widgets, and a node's title bar starts below
    # the node above it: tests/integration/test_workflow_layout_browser.py checks both in the real frontend.
    specs = [
        # id, type, pos, size, widgets, inputs [(name, type)], outputs [(name, type)]
        (2, "MotionCloneLoadToyModel", [40, 120], [320, 120], [], [],
         [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE"), ("MOTION_MODEL", "MOTIONCLONE_MOTION_MODEL")]),
        (3, "MotionCloneApplyAnimateDiff", [400, 120], [320, 80], [("beta_schedule", "sqrt_linear")],
         [("model", "MODEL"), ("motion_model", "MOTIONCLONE_MOTION_MODEL")], [("MODEL", "MODEL")]),
        (4, "MotionCloneToyReferenceClip", [40, 320], [320, 110],
         [("clip", REFERENCE_CLIP), ("frames", 8), ("size", 128)], [], [("IMAGE", "IMAGE")]),
        (5, "MotionCloneExtractMotion", [400, 320], [340, 400],
         [("width", 128), ("height", 128), ("resize", "stretch"), ("timestep", 400), ("seed", SEED),
          ("blocks", "up_blocks.1"), ("top_k", 1), ("steps", 100), ("guided_steps", -1), ("guided_fraction", 0.3)],
         [("model", "MODEL"), ("images", "IMAGE"), ("vae", "VAE"), ("clip", "CLIP")],
         [("MOTION", "MOTIONCLONE_MOTION")]),
        (6, "CLIPTextEncode", [780, 120], [320, 90], [("text", NEW_PROMPT)], [("clip", "CLIP")],
         [("CONDITIONING", "CONDITIONING")]),
        (7, "CLIPTextEncode", [780, 260], [320, 90], [("text", "")], [("clip", "CLIP")],
         [("CONDITIONING", "CONDITIONING")]),
        (8, "EmptyLatentImage", [780, 400], [320, 110], [("width", 128), ("height", 128), ("batch_size", 8)], [],
         [("LATENT", "LATENT")]),
        (9, "MotionCloneSampler", [1140, 120], [340, 400],
         [("seed", SEED), (CONTROL, "fixed"), ("steps", STEPS), ("guided_steps", GUIDED_STEPS),
          ("guided_fraction", GUIDED_FRACTION), ("cfg", CFG), ("motion_weight", WEIGHT), ("warm_up_steps", RAMP),
          ("cool_down_steps", RAMP), ("memory_mode", "auto"), ("gradient_every", 1)],
         [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT"),
          ("motion", "MOTIONCLONE_MOTION")], [("LATENT", "LATENT")]),
        (10, "KSampler", [1140, 570], [340, 262],
         [("seed", SEED), (CONTROL, "fixed"), ("steps", STEPS), ("cfg", CFG), ("sampler_name", "ddim"),
          ("scheduler", "ddim_uniform"), ("denoise", 1.0)],
         [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
         [("LATENT", "LATENT")]),
        (11, "VAEDecode", [1520, 120], [210, 50], [], [("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")]),
        (12, "VAEDecode", [1520, 570], [210, 50], [], [("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")]),
        (13, "ImageStitch", [1760, 320], [270, 150], STITCH,
         [("image1", "IMAGE"), ("image2", "IMAGE")], [("IMAGE", "IMAGE")]),
        (14, "ImageStitch", [2060, 320], [270, 150], STITCH,
         [("image1", "IMAGE"), ("image2", "IMAGE")], [("IMAGE", "IMAGE")]),
        (15, "SaveAnimatedWEBP", [2360, 320], [420, 440],
         [("filename_prefix", "MotionClone/try-it-on-cpu"), ("fps", 4.0), ("lossless", True), ("quality", 90),
          ("method", "default")],
         [("images", "IMAGE")], []),
    ]
    wires = [  # from id, from slot, to id, input name
        (2, 0, 3, "model"), (2, 3, 3, "motion_model"),
        (3, 0, 5, "model"), (4, 0, 5, "images"), (2, 2, 5, "vae"), (2, 1, 5, "clip"),
        (2, 1, 6, "clip"), (2, 1, 7, "clip"),
        (3, 0, 9, "model"), (6, 0, 9, "positive"), (7, 0, 9, "negative"), (8, 0, 9, "latent_image"),
        (5, 0, 9, "motion"),
        (3, 0, 10, "model"), (6, 0, 10, "positive"), (7, 0, 10, "negative"), (8, 0, 10, "latent_image"),
        (9, 0, 11, "samples"), (2, 2, 11, "vae"), (10, 0, 12, "samples"), (2, 2, 12, "vae"),
        (4, 0, 13, "image1"), (12, 0, 13, "image2"), (13, 0, 14, "image1"), (11, 0, 14, "image2"),
        (14, 0, 15, "images"),
    ]
    return specs, wires


def api_prompt(reference_clip: str = REFERENCE_CLIP, new_prompt: str = NEW_PROMPT, prefix: str | None = None) -> dict:
    """The same graph as an API-format prompt (what the server executes)."""
    specs, wires = graph_specs()
    prompt = {}
    for node_id, kind, _, _, widgets, _, _ in specs:
        prompt[str(node_id)] = {"class_type": kind, "inputs": {n: v for n, v in widgets if n != CONTROL}}
    for src, slot, dst, name in wires:
        prompt[str(dst)]["inputs"][name] = [str(src), slot]
    prompt["4"]["inputs"]["clip"] = reference_clip
    prompt["6"]["inputs"]["text"] = new_prompt
    if prefix:
        prompt["15"]["inputs"]["filename_prefix"] = prefix
    return prompt


def nodes_and_links():
    """(nodes, links) of the UI workflow."""
    specs, wires = graph_specs()
    by_id = {spec[0]: spec for spec in specs}
    links = []
    link_of_input = {}
    links_of_output: dict[tuple[int, int], list[int]] = {}
    for link_id, (src, slot, dst, name) in enumerate(wires, start=1):
        src_type = by_id[src][6][slot][1]
        dst_slot = [n for n, _ in by_id[dst][5]].index(name)
        links.append([link_id, src, slot, dst, dst_slot, src_type])
        link_of_input[(dst, name)] = link_id
        links_of_output.setdefault((src, slot), []).append(link_id)
    nodes = [{
        "id": 1, "type": "Note", "pos": [40, -420], "size": [740, 500], "flags": {}, "order": 0, "mode": 0,
        "inputs": [], "outputs": [], "properties": {}, "widgets_values": [NOTE], "color": "#432", "bgcolor": "#653",
    }]
    for order, (node_id, kind, pos, size, widgets, inputs, outputs) in enumerate(specs, start=1):
        nodes.append({
            "id": node_id, "type": kind, "pos": pos, "size": size, "flags": {}, "order": order, "mode": 0,
            "inputs": [{"name": n, "type": t, "link": link_of_input.get((node_id, n))} for n, t in inputs],
            "outputs": [{"name": n, "type": t, "links": links_of_output.get((node_id, i), []), "slot_index": i}
                        for i, (n, t) in enumerate(outputs)],
            "properties": {"Node name for S&R": kind}, "widgets_values": [value for _, value in widgets],
        })
    return nodes, links


def workflow() -> dict:
    nodes, links = nodes_and_links()
    return {
        "last_node_id": max(node["id"] for node in nodes), "last_link_id": len(links), "nodes": nodes, "links": links,
        "groups": [], "config": {}, "extra": {"ds": {"scale": 0.6, "offset": [140, 450]}}, "version": 0.4,
    }


def motion_scores(path: str) -> dict[str, float]:
    """DMT motion fidelity of the unguided and cloned panels of the saved animation to its reference panel."""
    import numpy as np
    import torch
    from PIL import Image, ImageSequence

    from motionclone.errors import MotionCloneError
    from motionclone.fidelity import motion_fidelity

    def score(reference, generated) -> float:
        try:
            return motion_fidelity(reference, generated).score
        except MotionCloneError:  # no point of the generated panel could be tracked: nothing follows the motion
            return 0.0

    with Image.open(path) as animation:
        frames = np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(animation)])
    panels = torch.from_numpy(frames).float().div(255).chunk(3, dim=2)  # side by side: split the width
    return {"unguided": score(panels[0], panels[1]), "cloned": score(panels[0], panels[2])}
