"""Custom socket types of the pack, declared once."""

from __future__ import annotations

from comfy_api.latest import io

MotionModelSocket = io.Custom("MOTION_MODEL")
MotionSocket = io.Custom("MOTION")  # a motionclone.MotionRepresentation
InversionSocket = io.Custom("INVERSION")  # a nodes.inversion.InvertedClip
SubjectMaskSocket = io.Custom("MOTIONCLONE_MASK")  # a motionclone.subject.SubjectMask
SemanticGuidanceSocket = io.Custom("MOTIONCLONE_SEMANTIC")  # a motionclone.subject.SemanticSettings
