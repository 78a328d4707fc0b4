"""The pack's UI-format workflows, checked against live node definitions and converted to API prompts.

A UI workflow (what drag-and-drop and the template browser load) stores widget values by position, in
the order the frontend creates widgets from `/object_info`: each widget input in `input_order`, plus the
frontend's own entries (a "control after generate" combo after seed-like INTs, an upload button after
combos with an upload option). ComfyUI's backend has no converter, so the tests carry this one; the
browser tests check it against the frontend's own conversion.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from comfy_harness import PACK_ROOT
from model_files import CLIP_FPS
from prompts import FRAMES

WORKFLOWS_DIR = Path(PACK_ROOT) / "workflows"
# The committed workflows keep the official settings (16 frames of 512x512, 100-300 steps), which take
# hours on a CPU. Only for running them in the tests, these widget values are replaced wherever a node
# has them; the reference clip of MODEL_FILES has FRAMES frames at CLIP_FPS, which Select Frames takes
# all of (its span is the clip's length). Validation checks the committed values.
CPU_OVERRIDES = {"width": 64, "height": 64, "batch_size": FRAMES, "steps": 4, "guided_steps": 2,
                 "warm_up_steps": 1, "cool_down_steps": 1, "frames": FRAMES, "span_seconds": FRAMES / CLIP_FPS}
# Workflows that run on a CPU as shipped (the toy-model demo): no overrides, and their own settings and output
# checks in test_toy_demo.py instead of the official ones.
CPU_READY_WORKFLOWS = {"0-try-it-on-cpu"}
FRONTEND_ONLY_NODES = {"Note", "MarkdownNote"}  # exist only in the frontend; never sent to the server
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"  # a combo whose chosen option may bring widgets of its own (ComfyUI >= 0.1x)
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", DYNAMIC_COMBO}
PACK_NODE_PREFIX = "MotionClone"  # the pack's own nodes: its workflows carry every widget of theirs
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")


def workflow_paths() -> dict[str, Path]:
    """Every workflow of the pack by name (the file name without .json, as the template browser lists it)."""
    return {path.stem: path for path in sorted(WORKFLOWS_DIR.glob("*.json"))}


def load_workflow(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


@dataclass(frozen=True)
class Widget:
    name: str
    kind: str  # "value" (sent to the server), "control" (after-generate mode) or "upload" (upload button)
    spec: tuple = ()
    optional: bool = False

    @property
    def default(self):
        return self.spec[1].get("default") if len(self.spec) > 1 else None


def _input_specs(info: dict, with_section: bool = False) -> list[tuple]:
    specs = []
    for section in ("required", "optional"):
        declared = info["input"].get(section, {})
        for name in info.get("input_order", {}).get(section, list(declared)):
            specs.append((name, declared[name], section) if with_section else (name, declared[name]))
    return specs


def _is_widget(spec: list) -> bool:
    options = spec[1] if len(spec) > 1 else {}
    return (isinstance(spec[0], list) or spec[0] in WIDGET_TYPES) and not options.get("forceInput")


def widget_layout(info: dict) -> list[Widget]:
    """The entries of a node's `widgets_values`, in order, as the frontend writes them."""
    layout = []
    for name, spec, section in _input_specs(info, with_section=True):
        if not _is_widget(spec):
            continue
        options = spec[1] if len(spec) > 1 else {}
        layout.append(Widget(name, "value", tuple(spec), optional=section == "optional"))
        # The frontend's rule: an explicit control_after_generate decides; without one, seed names get it.
        if spec[0] == "INT" and options.get("control_after_generate", name in ("seed", "noise_seed")):
            layout.append(Widget("control_after_generate", "control"))
        if any(key.endswith("_upload") and flag for key, flag in options.items()):
            layout.append(Widget("upload", "upload"))
    return layout


def combo_options(spec: tuple) -> list:
    if spec[0] == DYNAMIC_COMBO:
        return [option["key"] for option in spec[1]["options"]]
    return spec[0] if isinstance(spec[0], list) else spec[1].get("options", [])


def _nested_widgets(spec: tuple, value) -> list:
    """The widgets a dynamic combo's chosen option adds after it (this converter lays out none of them)."""
    if not spec or spec[0] != DYNAMIC_COMBO:
        return []
    option = next((o for o in spec[1]["options"] if o["key"] == value), {"inputs": {}})
    return [name for section in option["inputs"].values() if isinstance(section, dict) for name in section]


def frontend_filled(node_type: str, layout: list[Widget], values: list) -> list[Widget]:
    """The widgets after the last saved value that the frontend gives their defaults when it loads the workflow:
    inputs a core node gained after the workflow was saved (optional, with a default). Empty when any missing
    widget is not such, and for the pack's own nodes, whose workflows must carry every widget."""
    missing = layout[len(values):]
    if node_type.startswith(PACK_NODE_PREFIX) or not all(w.kind == "value" and w.optional and w.default is not None
                                                          for w in missing):
        return []
    return missing


def _value_problem(widget: Widget, value) -> str | None:
    if widget.kind == "control":
        return None if value in CONTROL_VALUES else f"must be one of {CONTROL_VALUES}"
    if widget.kind == "upload":
        return None if isinstance(value, str) else "must be a string"
    kind, options = widget.spec[0], widget.spec[1] if len(widget.spec) > 1 else {}
    if isinstance(kind, list) or kind in ("COMBO", DYNAMIC_COMBO):
        choices = combo_options(widget.spec)
        return None if value in choices else f"is not in the list {choices[:8]}{' ...' if len(choices) > 8 else ''}"
    expected = {"INT": int, "FLOAT": (int, float), "STRING": str, "BOOLEAN": bool}[kind]
    if not isinstance(value, expected) or (kind != "BOOLEAN" and isinstance(value, bool)):
        return f"must be {kind}"
    if "min" in options and value < options["min"]:
        return f"is below the minimum {options['min']}"
    if "max" in options and value > options["max"]:
        return f"is above the maximum {options['max']}"
    return None


def _types_match(a: str, b: str) -> bool:
    if "*" in (a, b):
        return True
    return bool(set(a.split(",")) & set(b.split(",")))


def validate_workflow(workflow: dict, object_info: dict) -> list[str]:
    """Every problem that would break the workflow in the frontend or on queueing; empty when it is sound."""
    problems = []
    nodes = {node["id"]: node for node in workflow["nodes"]}

    def label(node) -> str:
        return f"node {node['id']} ({node['type']})"

    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY_NODES:
            continue
        info = object_info.get(node["type"])
        if info is None:
            problems.append(f"{label(node)}: no such node type on this ComfyUI (missing node pack?)")
            continue
        declared = dict(_input_specs(info))
        layout, values = widget_layout(info), node.get("widgets_values", [])
        linked = {socket["name"] for socket in node.get("inputs", []) if socket.get("link") is not None}
        for socket in node.get("inputs", []):  # the frontend saves a socket per widget, its own ones included
            if socket["name"] not in declared and socket["name"] not in {w.name for w in layout}:
                problems.append(f"{label(node)}: input '{socket['name']}' does not exist "
                                f"(inputs: {', '.join(declared)})")
        for name, spec in info["input"].get("required", {}).items():
            if not _is_widget(spec) and name not in linked:
                problems.append(f"{label(node)}: required input '{name}' is not connected")
        complete = isinstance(values, list) and (
            len(values) == len(layout) or len(values) < len(layout) and frontend_filled(node["type"], layout, values))
        if not complete:
            names = ", ".join(w.name for w in layout)
            count = len(values) if isinstance(values, list) else "non-list"
            problems.append(f"{label(node)}: {count} widget values for {len(layout)} widgets ({names}); the workflow "
                            "is stale for this node's inputs: load it in ComfyUI, check the values, and save it again")
            continue
        for widget, value in zip(layout, values):
            problem = None if widget.name in linked else _value_problem(widget, value)
            if problem:
                problems.append(f"{label(node)}: widget '{widget.name}' = {value!r} {problem}")
            elif _nested_widgets(widget.spec, value):
                problems.append(f"{label(node)}: widget '{widget.name}' = {value!r} adds widgets of its own "
                                f"({', '.join(_nested_widgets(widget.spec, value))}), which the tests' converter does "
                                "not lay out")

    for link_id, origin_id, origin_slot, target_id, target_slot, link_type in workflow["links"]:
        origin, target = nodes.get(origin_id), nodes.get(target_id)
        if origin is None or target is None:
            problems.append(f"link {link_id}: connects missing node {origin_id if origin is None else target_id}")
            continue
        origin_info, target_info = object_info.get(origin["type"]), object_info.get(target["type"])
        if origin_info is None or target_info is None:
            continue  # already reported as a missing node type
        if origin_slot >= len(origin_info["output"]):
            problems.append(f"link {link_id}: {label(origin)} has no output {origin_slot}")
            continue
        socket = target.get("inputs", [])[target_slot] if target_slot < len(target.get("inputs", [])) else None
        if socket is None or socket.get("link") != link_id:
            problems.append(f"link {link_id}: {label(target)} input {target_slot} does not hold this link")
            continue
        if link_id not in (origin.get("outputs", [])[origin_slot].get("links") or []):
            problems.append(f"link {link_id}: {label(origin)} output {origin_slot} does not list this link")
        output_type = origin_info["output"][origin_slot]
        spec = dict(_input_specs(target_info)).get(socket["name"])
        input_type = "COMBO" if spec is None or isinstance(spec[0], list) else spec[0]
        for declared_type in (link_type, input_type):
            if not _types_match(output_type, declared_type):
                problems.append(f"link {link_id}: {label(origin)} output {output_type} -> {label(target)} "
                                f"input '{socket['name']}' ({declared_type})")
    return problems


def widgets_as_loaded(node: dict, object_info: dict) -> list:
    """The node's `widgets_values` as the frontend holds them once it loaded the workflow: the saved ones, then
    the defaults of widgets the workflow predates (`frontend_filled`)."""
    values = node.get("widgets_values", [])
    if node["type"] in FRONTEND_ONLY_NODES:
        return values
    return [*values,
            *(w.default for w in frontend_filled(node["type"], widget_layout(object_info[node["type"]]), values))]


def named_widget_values(node: dict, object_info: dict) -> dict:
    """The values a node sends to the server, by input name (frontend-only entries left out), with the defaults
    the frontend gives widgets the workflow predates (`frontend_filled`)."""
    layout, values = widget_layout(object_info[node["type"]]), node.get("widgets_values", [])
    named = {w.name: value for w, value in zip(layout, values) if w.kind == "value"}
    return {**named, **{w.name: w.default for w in frontend_filled(node["type"], layout, values)}}


def to_api_prompt(workflow: dict, object_info: dict) -> dict:
    """The API-format prompt the frontend queues for `workflow` (active nodes only; notes dropped)."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY_NODES:
            continue
        if node.get("mode", 0) != 0:
            raise ValueError(f"node {node['id']} ({node['type']}) is muted or bypassed; the converter handles "
                             "active nodes only")
        inputs = named_widget_values(node, object_info)
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                _, origin_id, origin_slot, *_ = links[socket["link"]]
                inputs[socket["name"]] = [str(origin_id), origin_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


# A workflow with 'MotionClone: Context Windows' shrinks its windows too, and keeps more frames than one of
# them, so that its CPU run really reads and guides several windows (3: frames 0-3, 3-6 and 6-9) instead of
# processing its few frames whole. The reference clip has fewer frames (FRAMES), so Select Frames repeats some,
# over a span whose last frame is still in the clip.
WINDOWED_CPU_OVERRIDES = {
    **CPU_OVERRIDES, "frames": 10, "batch_size": 10, "span_seconds": 0.4, "length": 4, "overlap": 1,
}


def uses_context_windows(workflow: dict) -> bool:
    return any(node["type"] == "MotionCloneContextWindows" for node in workflow["nodes"])


def cpu_overrides_for(workflow_name: str) -> dict:
    """The widget values a CPU run of this workflow replaces: none for a CPU-ready one."""
    if workflow_name in CPU_READY_WORKFLOWS:
        return {}
    if uses_context_windows(load_workflow(WORKFLOWS_DIR / f"{workflow_name}.json")):
        return WINDOWED_CPU_OVERRIDES
    return CPU_OVERRIDES


def with_cpu_overrides(prompt: dict, overrides: dict = CPU_OVERRIDES) -> dict:
    """`prompt` with `overrides` applied to every widget value of those names (links are left alone)."""
    for node in prompt.values():
        for name, value in overrides.items():
            if name in node["inputs"] and not isinstance(node["inputs"][name], list):
                node["inputs"][name] = value
    return prompt
