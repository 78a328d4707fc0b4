"""Write the one-minute CPU demo workflow (`workflows/0-try-it-on-cpu.json`, UI format) from its graph.

The graph is `tests/integration/demo_workflow.py` (shared with `bench/demo_cpu.py` and the tests, which check
that the committed workflow is what this writes).

Usage: python bench/make_demo_workflow.py [output.json]
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "integration"))

from demo_workflow import WORKFLOW_FILE, workflow  # noqa: E402

if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else WORKFLOW_FILE
    with open(out, "w") as handle:
        json.dump(workflow(), handle, indent=1)
        handle.write("\n")
    print(out)
