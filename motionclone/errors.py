"""One error hierarchy for everything a user can get wrong.

Every message says what was expected, what was found, and how to fix it: ComfyUI shows the message of
any exception raised while a node executes on that node, and for a user it is all there is to go by. The
classes subclass `ValueError` because each reports an input value that does not fit; ComfyUI itself
treats them like any other exception.
"""

from __future__ import annotations


class MotionCloneError(ValueError):
    """Root of all MotionClone user-facing errors."""


class MotionModuleFormatError(MotionCloneError):
    """A motion-module file is unreadable, damaged, or not an AnimateDiff SD1.5 module."""


class IncompatibleModelError(MotionCloneError):
    """The MODEL cannot take the motion module (not SD1.5, already animated, channel mismatch)."""


class FrameCountError(MotionCloneError):
    """The frame count is outside what the motion module or the motion representation supports."""


class MotionFileError(MotionCloneError):
    """A motion file is damaged, not a motion file, or from a newer version of the pack."""


class MotionMismatchError(MotionCloneError):
    """A motion representation does not fit the video or model it is used with."""
