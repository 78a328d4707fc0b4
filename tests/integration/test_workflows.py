"""Every workflow in workflows/ against a real ComfyUI server with the pack in its custom_nodes/.

Generic over `workflows/*.json`: a workflow added there is validated against the live `/object_info`,
converted to an API prompt and run end to end with the tiny stand-ins of `model_files.MODEL_FILES`,
and must be listed by the template browser's HTTP API.
"""

from __future__ import annotations

import copy
import json
import re

import pytest
from comfy_server import PACK_FOLDER_NAME

from workflows import (
    CPU_OVERRIDES,
    CPU_READY_WORKFLOWS,
    FRONTEND_ONLY_NODES,
    WINDOWED_CPU_OVERRIDES,
    cpu_overrides_for,
    load_workflow,
    named_widget_values,
    to_api_prompt,
    uses_context_windows,
    validate_workflow,
    with_cpu_overrides,
    workflow_paths,
)

OUTPUT_SIZE = (CPU_OVERRIDES["width"], CPU_OVERRIDES["height"])

# The official settings (docs/algorithm.md §9) the committed workflows must keep: (node, widget) -> allowed values.
OFFICIAL = {
    ("MotionCloneExtractMotion", "width"): {512}, ("MotionCloneExtractMotion", "height"): {512},
    ("MotionCloneExtractMotion", "timestep"): {400}, ("MotionCloneExtractMotion", "top_k"): {1},
    ("MotionCloneExtractMotion", "blocks"): {"up_blocks.1"},
    ("EmptyLatentImage", "width"): {512}, ("EmptyLatentImage", "height"): {512},
    ("EmptyLatentImage", "batch_size"): {16},
    ("MotionCloneSampler", "cfg"): {8.5}, ("KSampler", "cfg"): {8.5},
    ("MotionCloneSampler", "motion_weight"): {2000}, ("MotionCloneGuidance", "motion_weight"): {2000},
    ("MotionCloneSampler", "warm_up_steps"): {10}, ("MotionCloneSampler", "cool_down_steps"): {10},
    ("MotionCloneGuidance", "warm_up_steps"): {10}, ("MotionCloneGuidance", "cool_down_steps"): {10},
    # 16 frames over the clip's first 2 s: real speed at the 8 fps the videos play at
    ("MotionCloneSelectFrames", "frames"): {16}, ("MotionCloneSelectFrames", "mode"): {"span"},
    ("MotionCloneSelectFrames", "span_seconds"): {2.0}, ("MotionCloneSelectFrames", "start_seconds"): {0.0},
}
# Long-video workflows ('MotionClone: Context Windows') choose their frame count; the rest stays official, and
# the windows are the trained length: 16 frames, overlap 4.
FRAME_COUNT_SETTINGS = {("EmptyLatentImage", "batch_size"), ("MotionCloneSelectFrames", "frames"),
                        ("MotionCloneSelectFrames", "span_seconds")}
WINDOWS = {("MotionCloneContextWindows", "length"): {16}, ("MotionCloneContextWindows", "overlap"): {4}}
OFFICIAL_FPS = 8.0  # Select Frames' frames over span_seconds: the rate the official 16 frames over 2 s play at
VIDEO_SAVERS = {"CreateVideo", "SaveAnimatedWEBP"}  # the nodes whose fps sets the saved video's playback rate
OFFICIAL_SCHEDULES = {(100, 50, 0.3), (300, 180, 0.4)}  # t2v_camera, t2v_object (v2): steps, guided steps, fraction

WORKFLOWS = workflow_paths()
# The SD1.5 workflows, which keep the official settings; the CPU-ready toy demo has its own (test_toy_demo.py).
OFFICIAL_WORKFLOWS = {name: path for name, path in WORKFLOWS.items() if name not in CPU_READY_WORKFLOWS}


def test_the_issue_workflows_are_there():
    assert {"1-camera-motion-clone", "2-object-motion-with-lora", "3-save-and-reuse-motion",
            "4-guidance-stock-ksampler", "6-long-video-48-frames"} <= set(WORKFLOWS)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_matches_the_live_node_definitions(server, object_info, name):
    problems = validate_workflow(load_workflow(WORKFLOWS[name]), object_info)
    assert not problems, f"{name}.json:\n" + "\n".join(problems)


def _broken(workflow: dict, node_type: str, change) -> dict:
    broken = copy.deepcopy(workflow)
    change(next(node for node in broken["nodes"] if node["type"] == node_type), broken)
    return broken


def test_validation_names_the_node_and_widget_of_each_breakage(object_info):
    workflow = load_workflow(WORKFLOWS["1-camera-motion-clone"])
    motion_link = next(link for link in workflow["links"] if link[5] == "MOTIONCLONE_MOTION")
    frames_node = next(node for node in workflow["nodes"] if node["type"] == "MotionCloneSelectFrames")
    cases = {
        "stale widgets": (_broken(workflow, "MotionCloneSampler", lambda n, w: n["widgets_values"].pop()),
                          "(MotionCloneSampler): 10 widget values for 11 widgets (seed, control_after_generate, steps"),
        "out of range": (_broken(workflow, "MotionCloneExtractMotion",
                                 lambda n, w: n["widgets_values"].__setitem__(3, 1000)),
                         "(MotionCloneExtractMotion): widget 'timestep' = 1000 is above the maximum 999"),
        "not in list": (_broken(workflow, "MotionCloneExtractMotion",
                                lambda n, w: n["widgets_values"].__setitem__(5, "up_blocks.3")),
                        "widget 'blocks' = 'up_blocks.3' is not in the list"),
        "bad control": (_broken(workflow, "MotionCloneSampler",
                                lambda n, w: n["widgets_values"].__setitem__(1, "sometimes")),
                        "widget 'control_after_generate' = 'sometimes' must be one of"),
        "unknown type": (_broken(workflow, "MotionCloneSampler",
                                 lambda n, w: n.__setitem__("type", "MotionCloneRenamed")),
                         "(MotionCloneRenamed): no such node type"),
        "renamed input": (_broken(workflow, "MotionCloneSampler",
                                  lambda n, w: n["inputs"][-1].__setitem__("name", "motions")),
                          "input 'motions' does not exist"),
        "wrong type": (_broken(workflow, "MotionCloneSampler",
                               lambda n, w: next(link for link in w["links"] if link[0] == motion_link[0])
                               .__setitem__(1, frames_node["id"])),
                       "output IMAGE -> node"),
    }
    for case, (broken, expected) in cases.items():
        problems = validate_workflow(broken, object_info)
        assert any(expected in problem for problem in problems), f"{case}: {problems}"


@pytest.mark.parametrize("name", OFFICIAL_WORKFLOWS)
def test_workflow_keeps_the_official_settings_and_explains_itself(object_info, name):
    workflow = load_workflow(WORKFLOWS[name])
    nodes = [node for node in workflow["nodes"] if node["type"] not in FRONTEND_ONLY_NODES]
    official = dict(OFFICIAL)
    if uses_context_windows(workflow):
        official = {key: allowed for key, allowed in official.items() if key not in FRAME_COUNT_SETTINGS} | WINDOWS
    seeds = {node["id"]: named_widget_values(node, object_info)["seed"] for node in nodes
             if node["type"] in ("MotionCloneExtractMotion", "MotionCloneSampler", "KSampler")}
    assert len(set(seeds.values())) <= 1, (
        f"{name}: extraction and sampling seeds differ (the official code uses one): {seeds}"
    )
    for node in nodes:
        values = named_widget_values(node, object_info)
        for widget, value in values.items():
            allowed = official.get((node["type"], widget))
            assert allowed is None or value in allowed, (
                f"{name}: node {node['id']} {node['type']}.{widget} = {value!r}, official {allowed}"
            )
        if node["type"] == "MotionCloneSampler":
            schedule = (values["steps"], values["guided_steps"], values["guided_fraction"])
            assert schedule in OFFICIAL_SCHEDULES, f"{name}: node {node['id']} schedule {schedule}"
    notes = [node["widgets_values"][0] for node in workflow["nodes"] if node["type"] in FRONTEND_ONLY_NODES]
    assert any("VRAM" in note and "What to change" in note for note in notes), (
        f"{name}: no note with what to change and VRAM"
    )


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_runs_end_to_end_with_tiny_models(server, object_info, name):
    overrides = cpu_overrides_for(name)
    prompt = with_cpu_overrides(to_api_prompt(load_workflow(WORKFLOWS[name]), object_info), overrides)
    log_start = len(server.log())
    entry = server.run(prompt, timeout=600)
    output_nodes = {node_id for node_id, node in prompt.items() if object_info[node["class_type"]]["output_node"]}
    assert output_nodes and output_nodes <= set(entry["outputs"]), (
        f"output nodes without a result: {output_nodes - set(entry['outputs'])}"
    )
    media = [item for outputs in entry["outputs"].values() for item in outputs.get("images", [])
             if item.get("type") == "output"]
    assert media, "the workflow saved no video or animated image"
    for item in media if name not in CPU_READY_WORKFLOWS else ():  # the demo's output: test_toy_demo.py
        # Select Frames keeps `frames` frames over `span_seconds` (the whole test clip), and its fps output is their
        # rate (the clip's own rate with CPU_OVERRIDES, which keep all its frames)
        path = server.base / "output" / item["subfolder"] / item["filename"]
        expected = (overrides["frames"], OUTPUT_SIZE, overrides["frames"] / overrides["span_seconds"])
        assert _frames_size_and_rate(path) == expected, path.name
    log = server.log()[log_start:]
    if uses_context_windows(load_workflow(WORKFLOWS[name])):  # windows of 4 of its 10 frames: 0-3, 3-6, 6-9
        assert f"Extracted motion: {overrides['frames']} frames, 3 windows of {overrides['length']} frames" in log, \
            "the CPU run did not read the reference in several windows"
    assert "lora key not loaded" not in log, "a LoRA of MODEL_FILES does not match the checkpoint's layers"
    assert not re.search(r"clip missing|unet missing|Missing VAE keys|left over keys", log), (
        "a checkpoint of MODEL_FILES lacks or adds keys"
    )


WINDOWED_MODEL_USERS = {"MotionCloneExtractMotion", "MotionCloneDDIMInversion", "MotionCloneSampler",
                        "MotionCloneGuidance", "KSampler"}


@pytest.mark.parametrize("name", [name for name, path in WORKFLOWS.items()
                                  if uses_context_windows(load_workflow(path))])
def test_one_context_windows_node_feeds_extraction_and_sampling(object_info, name):
    """The same windows for reading the motion and guiding with it (a MOTION of other windows is refused), and
    more frames than one window, at real speed."""
    workflow = load_workflow(WORKFLOWS[name])
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}
    (context,) = [node for node in nodes.values() if node["type"] == "MotionCloneContextWindows"]
    (feed,) = [links[socket["link"]] for socket in context["inputs"] if socket["name"] == "model"]
    assert nodes[feed[1]]["type"] == "MotionCloneApplyAnimateDiff", (
        f"{name}: Context Windows is not fed by Apply AnimateDiff"
    )
    users = [node for node in nodes.values() if node["type"] in WINDOWED_MODEL_USERS]
    assert {"MotionCloneExtractMotion", "MotionCloneSampler"} <= {node["type"] for node in users}
    for node in users:
        (model,) = [links[socket["link"]] for socket in node["inputs"] if socket["name"] == "model"]
        assert model[1] == context["id"], (
            f"{name}: node {node['id']} ({node['type']}) takes its MODEL from node {model[1]}"
        )

    (selector,) = [node for node in nodes.values() if node["type"] == "MotionCloneSelectFrames"]
    (latent,) = [node for node in nodes.values() if node["type"] == "EmptyLatentImage"]
    frames = named_widget_values(selector, object_info)
    windows = named_widget_values(context, object_info)
    assert frames["frames"] == named_widget_values(latent, object_info)["batch_size"] > windows["length"]
    assert frames["frames"] / frames["span_seconds"] == OFFICIAL_FPS
    assert WINDOWED_CPU_OVERRIDES["frames"] > WINDOWED_CPU_OVERRIDES["length"]  # the CPU run has windows too


def _frames_size_and_rate(path) -> tuple[int, tuple[int, int], float]:
    import av  # ComfyUI's requirements bring these; the core tier runs without them
    from PIL import Image

    if path.suffix == ".webp":
        with Image.open(path) as image:
            image.load()  # the frame duration is read with the first frame
            return image.n_frames, image.size, 1000 / image.info["duration"]
    with av.open(str(path)) as container:
        frames = [frame for frame in container.decode(video=0)]
        return len(frames), (frames[0].width, frames[0].height), float(container.streams.video[0].average_rate)


@pytest.mark.parametrize("name", OFFICIAL_WORKFLOWS)
def test_reference_frames_are_selected_and_the_video_plays_at_their_rate(name):
    """Load Video -> Get Video Components -> Select Frames (images and fps), whose fps sets every saved video's."""
    workflow = load_workflow(WORKFLOWS[name])
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}

    def source(node, socket_name):
        socket = next((s for s in node.get("inputs", []) if s["name"] == socket_name and s.get("link") is not None),
                      None)
        if socket is None:
            return None
        _, origin, slot, *_ = links[socket["link"]]
        return nodes[origin]["type"], slot

    selectors = [node for node in nodes.values() if node["type"] == "MotionCloneSelectFrames"]
    if not any(node["type"] == "LoadVideo" for node in nodes.values()):
        pytest.skip(f"{name} reads no reference clip")
    assert len(selectors) == 1, f"{name}: the reference clip's frames are not picked by one Select Frames"
    (selector,) = selectors
    assert (source(selector, "images") == ("GetVideoComponents", 0)
            and source(selector, "fps") == ("GetVideoComponents", 2))
    savers = [node for node in nodes.values() if node["type"] in VIDEO_SAVERS]
    assert savers and all(source(node, "fps") == ("MotionCloneSelectFrames", 1) for node in savers), \
        f"{name}: a video's fps is not Select Frames' fps output"


def test_template_browser_lists_and_serves_every_workflow(server):
    listed = server.get("/workflow_templates")
    assert sorted(listed.get(PACK_FOLDER_NAME, [])) == sorted(WORKFLOWS)
    for name, path in WORKFLOWS.items():
        served = server.get(f"/api/workflow_templates/{PACK_FOLDER_NAME}/{name}.json")
        assert served == json.loads(path.read_text())
