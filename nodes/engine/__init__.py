"""The ComfyUI runtime of the pack: everything that changes how the UNet runs, with its keys as constants.

No node classes live here. The modules import only those before them in this order (checked by
`tests/core/test_layers.py`): run, checks, memory, motion_model, toy_model, forwards, gradient, windows,
semantic, guided_step, samplers, reading. docs/architecture.md walks one guided step through them.
"""
