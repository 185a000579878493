"""The installed jjepa version, recorded in every shard and checkpoint."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def jjepa_version() -> str:
    """The version of the installed ``jjepa`` distribution (``unknown`` if it is not installed)."""
    try:
        return version("jjepa")
    except PackageNotFoundError:
        return "unknown"
