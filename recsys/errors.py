"""The project's own exceptions.

Every error raised on bad input or bad configuration names three things: the bad value,
the requirement it broke, and the fix. ``DataError`` and ``ConfigError`` subclass
``ValueError`` so callers that already catch ``ValueError`` keep working.
"""

from __future__ import annotations


class RecsysError(Exception):
    """Base class of every error the project raises on purpose."""


class DataError(RecsysError, ValueError):
    """A data file or array is missing, malformed, or empty after filtering."""


class ConfigError(RecsysError, ValueError):
    """A configuration value breaks a requirement (checked before training starts)."""


def require(condition: bool, message: str, error: type[RecsysError] = ConfigError) -> None:
    """Raise ``error(message)`` unless ``condition`` holds.

    ``message`` should read "<value> ...: <requirement>. Fix: <fix>".
    """
    if not condition:
        raise error(message)
