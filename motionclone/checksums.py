"""Bundled files checked against a `SHA256SUMS` list, as `sha256sum` writes and reads it.

A line is `<64 hex digits><space><mode><name>`, the mode a space (text) or `*` (binary, `sha256sum -b`);
both name the same bytes. Every way a list or a listed file can be wrong is refused with what was found and
how to restore it, never with a raw parsing or OS error.
"""

from __future__ import annotations

import hashlib
import os
import re

from .errors import MotionCloneError
from .validation import excerpt

SUMS_FILE = "SHA256SUMS"
_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")
_CHUNK = 1 << 20


def parse_sha256sums(text: str, source: str, fix: str) -> dict[str, str]:
    """File name -> lower-case hex digest of every line of a `SHA256SUMS` text (blank lines skipped).

    `source` names the list in messages; `fix` says how to restore it.
    """
    digests = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _LINE.fullmatch(line.rstrip())
        if match is None:
            raise MotionCloneError(
                f"{source} line {number} is {excerpt(line)}, expected '<64 hex digits>  <file name>' (as sha256sum "
                f"writes it). {fix}")
        digests[match.group(2)] = match.group(1).lower()
    return digests


def verified_path(folder: str, name: str, what: str, fix: str) -> str:
    """Path of `folder/name` after checking its sha256 against `folder/SHA256SUMS`.

    `what` names the set of files in messages (e.g. "The toy model"); `fix` says how to restore them.
    """
    sums_path, path = os.path.join(folder, SUMS_FILE), os.path.join(folder, name)
    source = f"{what}'s {SUMS_FILE} ({sums_path})"
    expected = parse_sha256sums(_read_text(sums_path, source, fix), source, fix).get(name)
    if expected is None:
        raise MotionCloneError(f"{source} lists no {name}. {fix}")
    found = sha256_of(path, f"{what}'s file {name} ({path})", fix)
    if found != expected:
        raise MotionCloneError(
            f"{what}'s {name} has sha256 {found}, expected {expected} ({source}). The file is damaged or was "
            f"replaced. {fix}")
    return path


def sha256_of(path: str, what: str, fix: str) -> str:
    """Hex sha256 of the file at `path`; `what` names it in messages."""
    digest = hashlib.sha256()
    with _opened(path, what, fix, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_text(path: str, what: str, fix: str) -> str:
    with _opened(path, what, fix, "r") as handle:
        try:
            return handle.read()
        except UnicodeDecodeError:
            raise MotionCloneError(f"{what} is not text. {fix}") from None


def _opened(path: str, what: str, fix: str, mode: str):
    if os.path.isdir(path):
        raise MotionCloneError(f"{what} is a folder, not a file. {fix}")
    try:
        return open(path, mode, encoding=None if "b" in mode else "utf-8")
    except FileNotFoundError:
        raise MotionCloneError(f"{what} is missing. {fix}") from None
    except OSError as error:
        raise MotionCloneError(f"{what} cannot be read ({error.strerror or error}). {fix}") from None
