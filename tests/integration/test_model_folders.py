"""The pack's model folders in a ComfyUI that has never had them (a fresh install has neither)."""

from __future__ import annotations

import logging
import os

import pytest
from comfy_harness import loaded_pack_module

FOLDERS = {"animatediff_models": {".ckpt", ".safetensors"}, "motionclone": {".safetensors"}}


@pytest.fixture
def fresh_models_dir(comfyui, tmp_path, monkeypatch):
    """ComfyUI's real folder_paths pointed at an empty models/ that has none of the pack's folders."""
    import folder_paths

    models_dir = tmp_path / "models"
    models_dir.mkdir()
    monkeypatch.setattr(folder_paths, "models_dir", str(models_dir))
    for name in FOLDERS:  # forget the registration of the ComfyUI the session started; restored afterwards
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name, ([], set()))
    return models_dir


def test_registering_creates_the_missing_model_folders(fresh_models_dir):
    import folder_paths

    loaded_pack_module("nodes").register_model_folders()
    for name, extensions in FOLDERS.items():
        folder = fresh_models_dir / name
        assert folder.is_dir(), f"models/{name} was not created"
        assert folder_paths.get_folder_paths(name) == [str(folder)]
        assert extensions <= folder_paths.folder_names_and_paths[name][1]
    (fresh_models_dir / "animatediff_models" / "v3_sd15_mm.ckpt").write_bytes(b"")
    folder_paths.filename_list_cache.pop("animatediff_models", None)
    assert folder_paths.get_filename_list("animatediff_models") == ["v3_sd15_mm.ckpt"]


def test_existing_folders_and_their_files_are_kept(fresh_models_dir):
    (fresh_models_dir / "animatediff_models").mkdir()
    (fresh_models_dir / "animatediff_models" / "mm_sd_v15_v2.ckpt").write_bytes(b"kept")
    loaded_pack_module("nodes").register_model_folders()
    loaded_pack_module("nodes").register_model_folders()  # ComfyUI may import the pack again (reload)
    import folder_paths

    assert (fresh_models_dir / "animatediff_models" / "mm_sd_v15_v2.ckpt").read_bytes() == b"kept"
    assert folder_paths.get_folder_paths("animatediff_models") == [str(fresh_models_dir / "animatediff_models")]


def test_a_folder_that_cannot_be_created_is_reported_and_the_pack_still_registers(fresh_models_dir, caplog):
    (fresh_models_dir / "motionclone").write_text("a file where the folder should be")
    with caplog.at_level(logging.WARNING):
        loaded_pack_module("nodes").register_model_folders()
    assert (fresh_models_dir / "animatediff_models").is_dir()
    warning = next(record.getMessage() for record in caplog.records if "motionclone" in record.getMessage())
    assert os.path.join(str(fresh_models_dir), "motionclone") in warning and "create it" in warning
    import folder_paths

    assert folder_paths.get_folder_paths("motionclone") == [str(fresh_models_dir / "motionclone")]
