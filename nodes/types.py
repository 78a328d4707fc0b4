"""Custom socket types of the pack, declared once; all prefixed MOTIONCLONE_ so that no other pack's type collides."""

from __future__ import annotations

from comfy_api.latest import io

MotionModelSocket = io.Custom("MOTIONCLONE_MOTION_MODEL")
MotionSocket = io.Custom("MOTIONCLONE_MOTION")  # a motionclone.MotionRepresentation
InversionSocket = io.Custom("MOTIONCLONE_INVERSION")  # a nodes.inversion.InvertedClip
SubjectMaskSocket = io.Custom("MOTIONCLONE_MASK")  # a motionclone.subject.SubjectMask
SemanticGuidanceSocket = io.Custom("MOTIONCLONE_SEMANTIC")  # a motionclone.subject.SemanticSettings
