"""Bundled files checked against SHA256SUMS: every line format sha256sum writes, and every way it can break."""

from __future__ import annotations

import hashlib
import re

import pytest

from motionclone import MotionCloneError
from motionclone.checksums import parse_sha256sums, verified_path

FIX = "Restore them with git checkout."
CONTENT = b"toy weights\n"
DIGEST = hashlib.sha256(CONTENT).hexdigest()


def _folder(tmp_path, sums: str, name: str = "toy_unet.safetensors"):
    (tmp_path / name).write_bytes(CONTENT)
    (tmp_path / "SHA256SUMS").write_text(sums)
    return str(tmp_path)


@pytest.mark.parametrize("separator", ["  ", " *"], ids=["text mode", "binary mode (sha256sum -b)"])
def test_both_modes_sha256sum_writes_name_the_same_file(tmp_path, separator):
    folder = _folder(tmp_path, f"{DIGEST}{separator}toy_unet.safetensors\n")
    assert verified_path(folder, "toy_unet.safetensors", "The toy model", FIX) == str(tmp_path / "toy_unet.safetensors")


def test_names_with_spaces_and_upper_case_digests_and_blank_lines_are_read():
    text = f"\n{DIGEST.upper()}  my weights.safetensors\r\n\n"
    assert parse_sha256sums(text, "SHA256SUMS", FIX) == {"my weights.safetensors": DIGEST}


@pytest.mark.parametrize("line", [f"{DIGEST} a.safetensors", "abc  a.safetensors", f"{DIGEST}",
                                  f"SHA256 (a.safetensors) = {DIGEST}"],
                         ids=["one space", "short digest", "no name", "BSD tag format"])
def test_a_malformed_line_is_refused_with_its_number_and_the_expected_form(line):
    with pytest.raises(MotionCloneError, match=re.escape("SHA256SUMS line 2 is ") + ".*" + re.escape(
            "expected '<64 hex digits>  <file name>' (as sha256sum writes it). " + FIX)):
        parse_sha256sums(f"\n{line}\n", "SHA256SUMS", FIX)


def test_a_line_of_three_columns_names_a_file_with_a_space_so_the_listed_file_is_reported_missing(tmp_path):
    folder = _folder(tmp_path, f"{DIGEST}  toy_unet.safetensors 2026-12-07\n")
    assert parse_sha256sums((tmp_path / "SHA256SUMS").read_text(), "SHA256SUMS", FIX) == {
        "toy_unet.safetensors 2026-12-07": DIGEST}  # as sha256sum -c reads it
    with pytest.raises(MotionCloneError, match=re.escape("lists no toy_unet.safetensors. " + FIX)):
        verified_path(folder, "toy_unet.safetensors", "The toy model", FIX)


def test_a_damaged_file_is_refused_with_both_digests(tmp_path):
    folder = _folder(tmp_path, f"{'0' * 64}  toy_unet.safetensors\n")
    with pytest.raises(MotionCloneError, match=f"The toy model's toy_unet.safetensors has sha256 {DIGEST}, expected "
                       f"{'0' * 64} .*damaged or was replaced. {FIX}"):
        verified_path(folder, "toy_unet.safetensors", "The toy model", FIX)


@pytest.mark.parametrize("broken, found", [
    ("file is a folder", "The toy model's file toy_unet.safetensors .* is a folder, not a file"),
    ("sums is a folder", "The toy model's SHA256SUMS .* is a folder, not a file"),
    ("file missing", "The toy model's file toy_unet.safetensors .* is missing"),
    ("sums missing", "The toy model's SHA256SUMS .* is missing"),
    ("not listed", "The toy model's SHA256SUMS .* lists no toy_unet.safetensors"),
    ("sums not text", "The toy model's SHA256SUMS .* is not text"),
])
def test_every_broken_install_is_refused_naming_the_file_and_the_fix(tmp_path, broken, found):
    folder = _folder(tmp_path, f"{DIGEST}  toy_unet.safetensors\n")
    if broken == "file is a folder":
        (tmp_path / "toy_unet.safetensors").unlink()
        (tmp_path / "toy_unet.safetensors").mkdir()
    elif broken == "sums is a folder":
        (tmp_path / "SHA256SUMS").unlink()
        (tmp_path / "SHA256SUMS").mkdir()
    elif broken == "file missing":
        (tmp_path / "toy_unet.safetensors").unlink()
    elif broken == "sums missing":
        (tmp_path / "SHA256SUMS").unlink()
    elif broken == "not listed":
        (tmp_path / "SHA256SUMS").write_text(f"{DIGEST}  toy_vae.safetensors\n")
    else:
        (tmp_path / "SHA256SUMS").write_bytes(b"\xff\xfe\x00 binary")
    with pytest.raises(MotionCloneError, match=found + ".*" + re.escape(FIX)):
        verified_path(folder, "toy_unet.safetensors", "The toy model", FIX)
