"""The three layers and their edge, checked from the source (AST; imports under `TYPE_CHECKING` count too).

- `motionclone/` is pure: it imports no ComfyUI module, nothing of `nodes/`, `bench/` or `tests/`;
- nothing but `bench/` imports `bench`;
- `nodes/` files import each other without a cycle; the engine's modules import only those before them in
  `ENGINE_ORDER`, and no node class, schema or face;
- node files (`nodes/*.py`) register no patch on a MODEL: that is the engine's work;
- faces (`nodes/*.py`) do not import each other, except the socket types.
"""

from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path

import pytest

PACK_ROOT = Path(__file__).resolve().parents[2]
COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "latent_preview", "server",
                 "execution", "nodes", "node_helpers"}
ENGINE_ORDER = ("run", "checks", "memory", "motion_model", "toy_model", "forwards", "gradient", "windows", "semantic",
                "guided_step", "samplers", "reading")
SHARED_FACE_MODULES = {"nodes.types"}
# ModelPatcher methods that put a patch, wrapper, injection or additional model on a MODEL.
PATCHING_CALLS = {"add_object_patch", "add_patches", "add_wrapper", "add_wrapper_with_key", "add_callback",
                  "add_callback_with_key", "set_injections", "set_additional_models", "set_model_patch",
                  "set_model_patch_replace", "set_model_attn1_patch", "set_model_attn2_patch",
                  "set_model_attn1_replace", "set_model_attn2_replace", "set_model_forward_timestep_embed_patch",
                  "set_model_unet_function_wrapper", "set_model_denoise_mask_function",
                  "set_model_sampler_cfg_function", "set_model_sampler_post_cfg_function",
                  "set_model_sampler_pre_cfg_function"}


def _python_files(root: Path) -> list[Path]:
    skip = {".git", "__pycache__", ".venv"}
    return sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts))


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(root: Path, path: Path) -> list[tuple[str, int]]:
    """`(module, line)` of every import in `path` (relative imports resolved from the pack root; the pack root's
    own `__init__` is ""), at any depth: inside functions and `if TYPE_CHECKING:` blocks too."""
    module = _module_name(root, path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                anchor = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            names = [f"{base}.{alias.name}" if base else alias.name for alias in node.names]
            found += [(name, node.lineno) for name in names]
    return found


def _resolve(target: str, modules: set[str]) -> str | None:
    """The pack module `target` names (a module, or a name inside one), or None for an outside module."""
    while target:
        if target in modules:
            return target
        target = target.rpartition(".")[0]
    return None


def layering_breaches(root: Path) -> list[str]:
    """Every breach of the rules in this file's docstring, as `path:line: what`."""
    files = {_module_name(root, p): p for p in _python_files(root)}
    modules = set(files)
    breaches = []
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        where = path.relative_to(root)
        top = module.split(".")[0]
        for target, line in _imports(root, path):
            internal = _resolve(target, modules)
            outside_top = target.split(".")[0]
            if top == "motionclone":
                if internal is None and outside_top in COMFY_MODULES | {"bench", "tests"}:
                    breaches.append(f"{where}:{line}: motionclone imports {target} (the pure layer imports no ComfyUI)")
                if internal is not None and internal.split(".")[0] != "motionclone":
                    breaches.append(f"{where}:{line}: motionclone imports {target} (only motionclone itself)")
            if top != "bench" and (outside_top == "bench" or (internal or "").split(".")[0] == "bench"):
                breaches.append(f"{where}:{line}: {module or 'the pack root'} imports {target} (nothing imports bench)")
            if top == "nodes" and internal is not None and internal.startswith("nodes") and internal != module:
                graph.setdefault(module, set()).add(internal)
                breaches += _engine_breaches(module, internal, f"{where}:{line}")
            if module.startswith("nodes.engine") and outside_top == "comfy_api":
                breaches.append(f"{where}:{line}: {module} imports {target} (the engine holds no node schema)")
        if top == "nodes" and not module.startswith("nodes.engine") and module != "nodes":
            breaches += [f"{where}:{node.lineno}: {module} calls {node.func.attr} (node files register no patch)"
                         for node in ast.walk(ast.parse(path.read_text()))
                         if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                         and node.func.attr in PATCHING_CALLS]
    breaches += [f"import cycle among nodes/ files: {' -> '.join(cycle)}" for cycle in _cycles(graph)]
    return breaches


def _engine_breaches(module: str, target: str, where: str) -> list[str]:
    engine = "nodes.engine."
    if module.startswith(engine):
        if target == "nodes.engine":
            return []
        if not target.startswith(engine):
            return [f"{where}: {module} imports the face {target} (the engine imports no node file)"]
        mine, theirs = module[len(engine):], target[len(engine):]
        if mine in ENGINE_ORDER and theirs in ENGINE_ORDER and ENGINE_ORDER.index(theirs) >= ENGINE_ORDER.index(mine):
            return [f"{where}: {module} imports {target}, which comes after it in ENGINE_ORDER"]
        return []
    if module != "nodes" and not target.startswith("nodes.engine") and target not in SHARED_FACE_MODULES | {"nodes"}:
        return [f"{where}: the face {module} imports the face {target} (faces share only nodes.types and the engine)"]
    return []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_the_pack_keeps_its_layers():
    assert layering_breaches(PACK_ROOT) == []


def test_the_engine_order_names_every_engine_module():
    engine = {p.stem for p in (PACK_ROOT / "nodes" / "engine").glob("*.py")} - {"__init__"}
    assert engine == set(ENGINE_ORDER)


# One deliberate breach per rule, written into a copy of the pack: the check must name each.
BREACHES = {
    "pure layer imports ComfyUI": ("motionclone/layout.py", "import comfy.model_management\n",
                                   "motionclone imports comfy.model_management"),
    "pure layer imports the runtime": ("motionclone/layout.py", "from ..nodes.engine import run\n",
                                       "motionclone imports nodes.engine.run"),
    "product imports bench": ("nodes/toy.py", "from ..bench import fidelity\n",
                              "imports bench.fidelity (nothing imports bench)"),
    "tests import bench": ("tests/core/test_ddim.py", "import bench.fidelity\n",
                           "imports bench.fidelity (nothing imports bench)"),
    "type-only cycle": ("nodes/engine/run.py",
                        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                        "    from .guided_step import GuidedStep\n",
                        "comes after it in ENGINE_ORDER"),
    "cycle between faces": ("nodes/motion.py", "from .sampling import SAMPLER_NODE\n",
                            "the face nodes.motion imports the face nodes.sampling"),
    "engine imports a face": ("nodes/engine/reading.py", "from ..motion import BLOCK_CHOICES\n",
                              "the engine imports no node file"),
    "node file registers a patch": ("nodes/toy.py", "def _patch(model):\n    model.add_object_patch('x', None)\n",
                                    "calls add_object_patch (node files register no patch)"),
}


@pytest.mark.parametrize("rule", list(BREACHES))
def test_each_rule_fails_on_a_breach(tmp_path, rule):
    copy = tmp_path / "pack"
    shutil.copytree(PACK_ROOT, copy, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.safetensors", "*.jpg",
                                                                   "*.webp", "*.png"))
    relative, code, expected = BREACHES[rule]
    target = copy / relative
    target.write_text(target.read_text() + "\n" + code)
    breaches = layering_breaches(copy)
    assert any(expected in breach for breach in breaches), breaches


def test_a_real_cycle_is_named(tmp_path):
    copy = tmp_path / "pack"
    for name, code in {"nodes/__init__.py": "", "nodes/engine/__init__.py": "",
                       "nodes/engine/run.py": "from . import checks\n",
                       "nodes/engine/checks.py": "from . import run\n"}.items():
        os.makedirs((copy / name).parent, exist_ok=True)
        (copy / name).write_text(code)
    assert "import cycle among nodes/ files: nodes.engine.checks -> nodes.engine.run -> nodes.engine.checks" in \
        layering_breaches(copy)
