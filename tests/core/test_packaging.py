"""Packaging: the registry fields of pyproject.toml, and the Manager's requirements.txt."""

from __future__ import annotations

import os
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
    assert {"torch", "einops", "numpy", "safetensors", "opencv-python"} <= set(project["dependencies"])
    assert os.path.isfile(os.path.join(PACK_ROOT, project["license"]["file"]))
    assert {"pytest>=8", "comfyui-frontend-package", "playwright"} <= set(project["optional-dependencies"]["test"])


def test_comfy_table_has_publisher_name_icon_and_comfyui_floor():
    comfy = _pyproject()["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] == "MotionClone"
    assert comfy["requires-comfyui"] == ">=0.3.64"
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


def test_requirements_txt_lists_the_dependencies_without_torch():
    with open(os.path.join(PACK_ROOT, "requirements.txt")) as f:
        lines = {line.strip() for line in f if line.strip() and not line.startswith("#")}
    assert lines == set(_pyproject()["project"]["dependencies"]) - {"torch"}
