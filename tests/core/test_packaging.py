"""Packaging: the registry fields of pyproject.toml, the Manager's requirements.txt, the test requirements."""

from __future__ import annotations

import ast
import os
import sys

import tomllib

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _pyproject() -> dict:
    with open(os.path.join(PACK_ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_project_table_has_the_registry_fields():
    project = _pyproject()["project"]
    assert project["name"] == "comfyui-motionclone"
    major, minor, patch = project["version"].split(".")  # semver
    assert all(part.isdigit() for part in (major, minor, patch))
    assert os.path.isfile(os.path.join(PACK_ROOT, project["license"]["file"]))


def test_comfy_table_has_publisher_name_icon_and_comfyui_floor():
    comfy = _pyproject()["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] == "MotionClone"
    assert comfy["requires-comfyui"] == ">=0.8.0"
    assert comfy["Icon"].endswith("/icon.svg") and os.path.isfile(os.path.join(PACK_ROOT, "icon.svg"))


def test_comfy_table_ships_the_workflows_and_names_the_models_they_load():
    comfy = _pyproject()["tool"]["comfy"]
    assert all(os.path.isdir(os.path.join(PACK_ROOT, path)) for path in comfy["includes"])
    assert "workflows" in comfy["includes"]
    workflows = "".join(open(os.path.join(PACK_ROOT, "workflows", name)).read()
                        for name in os.listdir(os.path.join(PACK_ROOT, "workflows")) if name.endswith(".json"))
    for model in comfy["Models"]:
        folder, name = model["location"].strip("/").split("/")
        assert folder == "animatediff_models" and f'"{name}"' in workflows, model
        assert model["model_url"].startswith("https://") and model["model_url"].endswith(name)


def test_changelog_has_a_section_for_the_current_version():
    with open(os.path.join(PACK_ROOT, "CHANGELOG.md")) as f:
        headings = [line for line in f if line.startswith("## ")]
    assert headings and headings[0].startswith(f"## {_pyproject()['project']['version']} ")


def _requirements(name: str) -> set[str]:
    with open(os.path.join(PACK_ROOT, name)) as f:
        return {line.split("#")[0].strip() for line in f if line.split("#")[0].strip()}


def test_requirements_txt_lists_the_dependencies_and_neither_lists_torch():
    dependencies = set(_pyproject()["project"]["dependencies"])
    assert _requirements("requirements.txt") == dependencies
    assert not {name for name in dependencies if name.split("=")[0].split(">")[0].strip().lower() == "torch"}


# Modules of ComfyUI itself, importable because the pack runs inside it; not installed from PyPI.
COMFYUI_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "latent_preview",
                   "node_helpers", "nodes", "server", "execution", "app", "utils"}
IMPORT_NAMES = {"opencv-python": "cv2", "opencv-python-headless": "cv2", "pillow": "PIL"}


def _third_party_imports() -> dict[str, str]:
    """Top-level modules the shipped code imports that neither Python nor ComfyUI provides -> a file using it."""
    found = {}
    paths = [os.path.join(PACK_ROOT, "__init__.py")]
    for package in ("nodes", "motionclone"):
        for folder, _, files in os.walk(os.path.join(PACK_ROOT, package)):
            paths += [os.path.join(folder, name) for name in files if name.endswith(".py")]
    for path in paths:
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in COMFYUI_MODULES and top != "__future__":
                    found.setdefault(top, os.path.relpath(path, PACK_ROOT))
    return found


def test_dependencies_are_exactly_what_the_shipped_code_imports_besides_torch():
    imported = _third_party_imports()
    assert "torch" in imported and "numpy" in imported  # the scan sees the pack's imports at all
    declared = {IMPORT_NAMES.get(name.lower(), name) for name in _pyproject()["project"]["dependencies"]}
    assert declared == set(imported) - {"torch"}, (
        f"imported (module: first file): {imported}; declared in pyproject.toml: {sorted(declared)}")


def test_test_requirements_come_from_requirements_test_txt_not_an_extra():
    # `pip install ".[test]"` cannot work: the pack is a folder ComfyUI imports, not an installable package
    # (pip finds several top-level packages in its flat layout), so an extra would only mislead.
    assert "optional-dependencies" not in _pyproject()["project"]
    test_requirements = _requirements("requirements-test.txt")
    assert "-r requirements.txt" in test_requirements
    names = {line.split(">")[0].split("=")[0].strip() for line in test_requirements}
    assert {"pytest", "opencv-python-headless", "av", "requests", "playwright"} <= names
    assert "torch" not in names and "opencv-python" not in names  # torch goes first; headless OpenCV only
