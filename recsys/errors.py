"""The project's one exception family.

Every error raised on bad input or bad configuration names three things: the bad value,
the requirement it broke, and the fix ("<value> ...: <requirement>. Fix: <fix>").

- ``RecsysError``: the base; the console prints its message on one line and exits with 2.
- ``ConfigError`` (also a ``ValueError``): a configuration value breaks a requirement,
  checked before training starts.
- ``DataError`` (also a ``ValueError``): a data file or array is missing, malformed, or empty
  after filtering.
- ``MissingDependency`` (also an ``ImportError``): an optional package a feature needs is not
  installed (``implicit`` for ALS, ``matplotlib`` for plots, ``pyarrow`` for Parquet).

``ConfigError`` and ``DataError`` subclass ``ValueError`` and ``MissingDependency`` subclasses
``ImportError`` so callers that already catch those keep working.
"""

from __future__ import annotations

__all__ = ["RecsysError", "ConfigError", "DataError", "MissingDependency", "require", "missing_dependency"]


class RecsysError(Exception):
    """Base class of every error the project raises on purpose."""


class DataError(RecsysError, ValueError):
    """A data file or array is missing, malformed, or empty after filtering."""


class ConfigError(RecsysError, ValueError):
    """A configuration value breaks a requirement (checked before training starts)."""


class MissingDependency(RecsysError, ImportError):
    """An optional package that a feature needs is not installed."""


def require(condition: bool, message: str, error: type[RecsysError] = ConfigError) -> None:
    """Raise ``error(message)`` unless ``condition`` holds.

    ``message`` should read "<value> ...: <requirement>. Fix: <fix>".
    """
    if not condition:
        raise error(message)


def missing_dependency(package: str, feature: str, extra: str = "bench") -> MissingDependency:
    """The error for ``feature`` needing the optional ``package``, with the install command."""
    return MissingDependency(
        f"{feature} needs the `{package}` package, which is not installed. "
        f"Fix: pip install 'recsys[{extra}]' (or pip install {package})."
    )
