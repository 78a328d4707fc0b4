"""ComfyUI's own main.py as a server for the tests, and a small HTTP client for it.

The server runs in a subprocess with `--base-directory` set to a temporary folder, whose `custom_nodes/`
holds links to this pack (installed as a user would) and to the test-only node pack. Its database lies
in that folder too (ComfyUI's default is user/comfyui.db inside the checkout, which may be read-only).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from comfy_harness import PACK_ROOT, TESTING_PACK

HERE = os.path.dirname(os.path.abspath(__file__))
PACK_FOLDER_NAME = "ComfyUI-MotionClone"  # the folder name a git clone into custom_nodes/ gives


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ComfyServer:
    url: str
    base: Path  # the --base-directory: custom_nodes/, models/, input/, output/, user/
    log_path: Path

    def get(self, path: str):
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, payload) -> dict:
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
            return json.loads(body) if body else {}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, prompt_id: str, timeout: float = 300) -> dict:
        """The history entry of a queued prompt once it has finished; fails if it failed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history:
                entry = history[prompt_id]
                assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[-4000:]
                return entry
            time.sleep(0.5)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout:.0f} s")

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        """Queue an API-format prompt over HTTP, wait for it, and return its history entry."""
        queued = self.post("/prompt", {"prompt": prompt, "client_id": "motionclone-tests"})
        assert queued.get("node_errors") == {}, queued
        return self.wait_for(queued["prompt_id"], timeout)


def install_pack(base: Path) -> None:
    """custom_nodes/ with this pack and the test-only pack, as links (the pack's tree is used as is)."""
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    os.symlink(PACK_ROOT, base / "custom_nodes" / PACK_FOLDER_NAME)
    os.symlink(TESTING_PACK, base / "custom_nodes" / "motionclone_testing_pack")


@contextmanager
def running_server(root: str, base: Path, *extra_args: str, timeout: float = 120, cpu: bool = True):
    """Start `main.py` of the ComfyUI at `root` on a free port of 127.0.0.1, with `base` as its base
    directory and `extra_args` appended to its command line (`--cpu` first unless `cpu` is False); stop it
    on exit."""
    port = free_port()
    log_path = base / "server.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")])}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "serve_comfyui.py"), root, *(["--cpu"] if cpu else []),
             "--listen", "127.0.0.1", "--port", str(port), "--base-directory", str(base),
             "--database-url", f"sqlite:///{base / 'comfyui.db'}",
             "--disable-auto-launch", "--disable-api-nodes", *extra_args],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        server = ComfyServer(f"http://127.0.0.1:{port}", base, log_path)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    server.get("/system_stats")
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(f"ComfyUI server did not start:\n{server.log()[-3000:]}") from None
                    time.sleep(0.5)
            yield server
        finally:
            process.terminate()
            process.wait(timeout=30)


def fetch(server, path: str) -> tuple[int, str, bytes]:
    """`(status, content type, body)` of a GET of `path` on a running server (an HTTP error's status too)."""
    try:
        with urllib.request.urlopen(f"{server.url}{path}", timeout=30) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), b""
