"""The one-minute CPU demo from a shell: workflow 0's graph in a real ComfyUI, no downloads.

Runs the graph of `workflows/0-try-it-on-cpu.json` (`tests/integration/demo_workflow.py`) in-process with the
integration harness, against the ComfyUI at COMFYUI_PATH: the bundled toy model re-draws a bundled
reference clip with a new prompt, unguided and with MotionClone, and saves reference | unguided | cloned
side by side as an animated WEBP. Prints the motion fidelity (DMT score, 1 = same motion) of both.

Usage: COMFYUI_PATH=/path/to/ComfyUI python bench/demo_cpu.py [--prompt "a green triangle"]
       [--clip "cyan triangle moving down"] [--out try-it-on-cpu.webp]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    sys.path.insert(0, os.path.join(PACK_ROOT, "tests", "integration"))
    sys.path.append(PACK_ROOT)  # appended: the pack's nodes/ must not shadow ComfyUI's nodes module
    import demo_workflow as make_demo_workflow
    from comfy_harness import find_comfyui, start_comfyui

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompt", default=make_demo_workflow.NEW_PROMPT, help="the new prompt (a colour and a shape)")
    parser.add_argument("--clip", default=make_demo_workflow.REFERENCE_CLIP, help="the bundled reference clip")
    parser.add_argument("--out", default="try-it-on-cpu.webp", help="where to write the animated WEBP")
    options = parser.parse_args()

    root, reason = find_comfyui()
    if root is None:
        sys.exit(f"the demo needs a ComfyUI checkout: {reason}")
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        comfy = start_comfyui(root, workdir)
        started = time.perf_counter()
        outputs = comfy.run_prompt(make_demo_workflow.api_prompt(options.clip, options.prompt))
        image = outputs["15"]["images"][0]
        saved = os.path.join(comfy.output_dir, image["subfolder"], image["filename"])
        shutil.copyfile(saved, options.out)
        ran = time.perf_counter() - started
    print(f"wrote {options.out}: reference | unguided | cloned ('{options.prompt}'), ComfyUI {comfy.version}, "
          f"{ran:.0f} s to run the graph, {time.perf_counter() - began:.0f} s in all")
    for name, score in make_demo_workflow.motion_scores(options.out).items():
        print(f"motion fidelity to the reference, {name}: {score:.2f}")


if __name__ == "__main__":
    main()
