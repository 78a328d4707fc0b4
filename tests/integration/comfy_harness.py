"""Starts a real ComfyUI in-process for the integration tier.

ComfyUI is taken from `COMFYUI_PATH`, or from the ComfyUI whose `custom_nodes/` holds this pack. Its
base directory (custom_nodes/, models/, input/, output/, temp/, user/) is a temporary folder whose
custom_nodes/ holds links to this pack and to the test-only node pack beside this file, so the pack's
own folder registration and ComfyUI's real loaders find the files the tests write there. Nothing is
written inside the ComfyUI checkout, which may be read-only: its bytecode goes to a cache folder
elsewhere (`keep_bytecode_outside`).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.abc
import importlib.machinery
import inspect
import os
import sys
import tempfile
import types
import uuid
from dataclasses import dataclass

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTING_PACK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testing_pack")


def find_comfyui() -> tuple[str | None, str]:
    """(path, reason): the ComfyUI root to test against, or None and why not."""
    candidates = []
    if os.environ.get("COMFYUI_PATH"):
        candidates.append(os.path.abspath(os.environ["COMFYUI_PATH"]))
    parent = os.path.dirname(PACK_ROOT)
    if os.path.basename(parent) == "custom_nodes":
        candidates.append(os.path.dirname(parent))
    for path in candidates:
        if os.path.isfile(os.path.join(path, "nodes.py")) and os.path.isdir(os.path.join(path, "comfy")):
            return path, ""
    if candidates:
        return None, f"no ComfyUI at {candidates[0]} (needs nodes.py and comfy/)"
    return None, "set COMFYUI_PATH to a ComfyUI checkout, or install the pack in a ComfyUI's custom_nodes/"


def keep_bytecode_outside() -> None:
    """Python's bytecode of every later import (ComfyUI's included) goes to one cache folder outside the
    checkouts, unless PYTHONPYCACHEPREFIX already chose one: a read-only ComfyUI export gets no __pycache__.
    Also set in the environment, so that subprocesses (the server, the benchmark) inherit it."""
    if sys.pycache_prefix is None:
        sys.pycache_prefix = os.path.join(tempfile.gettempdir(), "motionclone-pycache")
    os.environ.setdefault("PYTHONPYCACHEPREFIX", sys.pycache_prefix)


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StubModule(f"{self.__name__}.{name}")

    def __call__(self, *args, **kwargs):
        raise ImportError(f"{self.__name__} is an import stub: the real package does not import on this machine")


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers imports of packages that have no CPU build here (torchvision, torchaudio)."""

    def __init__(self, roots: set[str]):
        self.roots = roots

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []


def _stub_unimportable(packages: tuple[str, ...]) -> list[str]:
    stubbed = []
    for package in packages:
        try:
            __import__(package)
        except Exception:  # noqa: BLE001 - a broken install fails in many ways; all mean "stub it"
            for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
                del sys.modules[name]
            stubbed.append(package)
    if stubbed:
        sys.meta_path.insert(0, _StubFinder(set(stubbed)))
    return stubbed


class StubServer:
    """What PromptExecutor touches of ComfyUI's PromptServer."""

    client_id = None
    last_node_id = None
    last_prompt_id = None

    def send_sync(self, event, data, sid=None):
        pass

    def queue_updated(self):
        pass


# The classic cache ignores the sizes, but executors read them as numbers at every prompt: 0.8.0 reads
# "ram" (GB); 0.33 also reads "ram_inactive" (GB), where `args.cache_ram` has become a list. Plain numbers
# suit every executor that takes cache_args.
CLASSIC_CACHE_ARGS = {"lru": 0, "ram": 0.0, "ram_inactive": 0.0}


@dataclass
class ComfyUI:
    root: str
    models_dir: str
    output_dir: str
    nodes: types.ModuleType
    execution: types.ModuleType
    version: str

    def node(self, node_id: str):
        return self.nodes.NODE_CLASS_MAPPINGS[node_id]

    def with_defaults(self, prompt: dict) -> dict:
        """Fill required inputs a prompt leaves out with the node's defaults (inputs differ across versions)."""
        for node in prompt.values():
            for name, spec in self.node(node["class_type"]).INPUT_TYPES().get("required", {}).items():
                if name in node["inputs"]:
                    continue
                options = spec[1] if len(spec) > 1 else {}
                if "default" in options:
                    node["inputs"][name] = options["default"]
                elif isinstance(spec[0], list):
                    node["inputs"][name] = spec[0][0]
                elif "options" in options:  # a V3 combo; a dynamic combo's options are {"key": ..., "inputs": ...}
                    first = options["options"][0]
                    node["inputs"][name] = first["key"] if isinstance(first, dict) else first
        return prompt

    def run_prompt(self, prompt: dict) -> dict:
        """Validate and execute an API-format prompt with ComfyUI's own PromptExecutor; returns UI outputs by node."""
        prompt = self.with_defaults(prompt)
        prompt_id = str(uuid.uuid4())
        valid, error, outputs, node_errors = asyncio.run(self.execution.validate_prompt(prompt_id, prompt, None))
        if not valid:
            raise AssertionError(f"prompt failed validation: {error} {node_errors}")
        options = {"cache_type": self.execution.CacheType.CLASSIC}
        if "cache_args" in inspect.signature(self.execution.PromptExecutor).parameters:  # ComfyUI >= 0.4
            options["cache_args"] = CLASSIC_CACHE_ARGS
        executor = self.execution.PromptExecutor(StubServer(), **options)
        executor.execute(prompt, prompt_id, {}, outputs)
        if not executor.success:
            errors = [m for m in executor.status_messages if m[0] == "execution_error"]
            raise PromptFailed(errors[0][1] if errors else executor.status_messages)
        return executor.history_result["outputs"]


class PromptFailed(AssertionError):
    def __init__(self, details):
        super().__init__(f"{details.get('exception_type')}: {details.get('exception_message')}"
                         if isinstance(details, dict) else str(details))
        self.details = details


def start_comfyui(root: str, workdir: str) -> ComfyUI:
    """ComfyUI at `root` imported into this process with `workdir` as its base directory (as
    `main.py --base-directory workdir` sets it), the pack and the test-only pack in its custom_nodes/."""
    keep_bytecode_outside()
    sys.path.insert(0, root)
    _stub_unimportable(("torchvision", "torchaudio"))
    from comfy.cli_args import args

    args.cpu = True
    # read once, when folder_paths is first imported: every default folder lies in workdir
    args.base_directory = workdir
    import folder_paths
    import utils.extra_config  # noqa: F401 - must precede `import nodes` (ComfyUI's import order)

    custom_nodes = os.path.join(workdir, "custom_nodes")
    models_dir = os.path.join(workdir, "models")
    output_dir = os.path.join(workdir, "output")
    for path in (custom_nodes, models_dir, output_dir, os.path.join(models_dir, "animatediff_models")):
        os.makedirs(path, exist_ok=True)
    os.symlink(PACK_ROOT, os.path.join(custom_nodes, "ComfyUI-MotionClone"))
    os.symlink(TESTING_PACK, os.path.join(custom_nodes, "motionclone_testing_pack"))
    outside = [path for path in (folder_paths.models_dir, folder_paths.get_output_directory(),
                                 folder_paths.get_temp_directory(), folder_paths.get_input_directory(),
                                 folder_paths.get_user_directory(),
                                 *folder_paths.get_folder_paths("custom_nodes"))
               if not os.path.abspath(path).startswith(os.path.abspath(workdir) + os.sep)]
    if outside:  # folder_paths was imported before (by the caller), with the checkout as its base
        raise RuntimeError(f"ComfyUI's folders lie outside the test's base directory {workdir}: {outside}")

    import execution

    import nodes

    init = nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False)
    if inspect.iscoroutine(init):
        asyncio.run(init)
    import comfyui_version

    return ComfyUI(root, models_dir, output_dir, nodes, execution, comfyui_version.__version__)


def loaded_pack_module(name: str):
    """A submodule of this pack as ComfyUI loaded it (e.g. "nodes.autograd"), not a second copy."""
    init = os.path.realpath(os.path.join(PACK_ROOT, "__init__.py"))
    for module_name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and os.path.realpath(path) == init:
            return importlib.import_module(f"{module_name}.{name}")
    raise LookupError("ComfyUI has not loaded the MotionClone pack")
