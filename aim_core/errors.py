"""Exceptions raised by aim_core. Every user-facing failure is one of these, with a message that says what to fix."""


class AIMError(Exception):
    """Base class for all errors aim_core raises on purpose."""


class VideoError(AIMError):
    """The video cannot be read: missing, not a video, corrupt, empty, or outside the limits."""


class QuestionError(AIMError, ValueError):
    """The question is empty or too long."""


class SettingsError(AIMError, ValueError):
    """A setting (efficiency, frames, keep ratio, schedule) is out of range."""


class ModelError(AIMError):
    """A model cannot be loaded or is of a family aim_core does not support."""
