"""Runs ComfyUI's own main.py as a server for the tests: `python serve_comfyui.py COMFYUI_ROOT [main.py args]`.

The only differences from `python main.py` are the import stub for packages with no CPU build here
(torchvision, torchaudio), installed only when the real package fails to import, and Python's bytecode
kept outside the (possibly read-only) ComfyUI checkout.
"""

from __future__ import annotations

import os
import runpy
import sys

from comfy_harness import _stub_unimportable, keep_bytecode_outside

if __name__ == "__main__":
    keep_bytecode_outside()
    root = os.path.abspath(sys.argv[1])
    _stub_unimportable(("torchvision", "torchaudio"))
    sys.argv = [os.path.join(root, "main.py"), *sys.argv[2:]]
    sys.path.insert(0, root)
    os.chdir(root)
    runpy.run_path(sys.argv[0], run_name="__main__")
