"""One error hierarchy for everything a user can get wrong.

Every message says what was expected, what was found, and how to fix it. The classes subclass
`ValueError`, so ComfyUI shows them as input errors on the node that raised them.
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
