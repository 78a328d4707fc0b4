"""`motionclone/` is pure torch: importing it must load no ComfyUI module."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMFY_MODULES = (
    "comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "nodes", "server", "execution",
)


def test_importing_motionclone_loads_no_comfyui_module(tmp_path):
    # A fake `comfy` package on the path would be picked up by any stray import: the check cannot pass by absence.
    (tmp_path / "comfy").mkdir()
    (tmp_path / "comfy" / "__init__.py").write_text("")
    (tmp_path / "folder_paths.py").write_text("")
    code = (
        "import json, sys; import motionclone, motionclone.checkpoint, motionclone.motion_module, motionclone.capture;"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {COMFY_MODULES!r})))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), PACK_ROOT])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                            check=True)
    assert json.loads(result.stdout) == []
