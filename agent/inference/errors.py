"""Exceptions that name what is wrong, so a pole's log says which file or frame to fix.

Both are ValueErrors: callers that only want "bad configuration or bad input" can catch that.
"""

from __future__ import annotations


class ModelError(ValueError):
    """The model file or its sidecar JSON is missing, malformed, or disagrees with the model."""


class FrameError(ValueError):
    """A frame handed to a detector is not an 8-bit 3-channel BGR image."""
