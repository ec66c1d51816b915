"""attnzoo's environment settings, read in one place with one meaning, for the hub and the datasets alike.

================================  ==========================================================================
``ATTNZOO_OFFLINE``               on: no download at all, neither hub checkpoints nor datasets; the cache is used
``HF_HUB_OFFLINE``                on: the same (huggingface_hub's own switch, honoured by attnzoo too)
``ATTNZOO_CACHE``                 the download cache (hub checkpoints, and ``datasets/`` under it);
                                  default ``~/.cache/attnzoo``
``ATTNZOO_HUB_DIR``               extra hub folders, ``os.pathsep``-separated, searched before the embedded hub
``ATTNZOO_DOWNLOAD_TIMEOUT``      seconds one read of a download may wait (a positive number)
``ATTNZOO_DOWNLOAD_DEADLINE``     seconds a whole download may take (a positive number)
================================  ==========================================================================

A switch is on for ``1``, ``true``, ``yes``, ``on`` and off for ``0``, ``false``, ``no``, ``off`` or an empty value
(any case, surrounding spaces ignored); an unset variable takes the default. Any other value is a ValueError that
names the variable and the value, rather than a guess. An empty path variable counts as unset.

Every function reads the environment when it is called, so a change of ``os.environ`` takes effect at once. This
module is a leaf: it imports nothing from attnzoo.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

__all__ = ["FALSE_VALUES", "TRUE_VALUES", "cache_dir", "download_deadline", "download_timeout", "env_flag",
           "env_seconds", "hub_dirs", "offline", "positive_seconds"]

TRUE_VALUES = frozenset({"1", "true", "yes", "on"})
FALSE_VALUES = frozenset({"", "0", "false", "no", "off"})


def env_flag(name: str, default: bool = False) -> bool:
    """The on/off switch ``$name``; ``default`` when it is unset."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in TRUE_VALUES:
        return True
    if value in FALSE_VALUES:
        return False
    raise ValueError(f"${name}={raw!r} is not an on/off value: use one of {', '.join(sorted(TRUE_VALUES))} (on) or "
                     f"{', '.join(sorted(FALSE_VALUES - {''}))} or an empty value (off)")


def positive_seconds(value: Any, given: str) -> float:
    """``value`` as a positive, finite number of seconds; else a ValueError that starts with ``given``."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{given} must be a positive number of seconds")
    return seconds


def env_seconds(name: str, default: float) -> float:
    """A positive, finite number of seconds from ``$name``; ``default`` when it is unset or empty."""
    raw = os.environ.get(name, "")
    return positive_seconds(raw, f"${name}={raw!r}") if raw.strip() else default


def offline() -> bool:
    """True when ``$ATTNZOO_OFFLINE`` or ``$HF_HUB_OFFLINE`` is on: nothing is downloaded, hub or dataset."""
    # both are read, so that a malformed value is reported even when the other switch is on
    flags = [env_flag("ATTNZOO_OFFLINE"), env_flag("HF_HUB_OFFLINE")]
    return any(flags)


def _env_path(name: str) -> Path | None:
    raw = os.environ.get(name, "")
    return Path(raw).expanduser() if raw.strip() else None


def cache_dir() -> Path:
    """The download cache root: ``$ATTNZOO_CACHE``, else ``~/.cache/attnzoo`` (datasets go in ``datasets/``)."""
    return _env_path("ATTNZOO_CACHE") or Path.home() / ".cache" / "attnzoo"


def hub_dirs() -> list[Path]:
    """The user's hub folders from ``$ATTNZOO_HUB_DIR`` (``os.pathsep``-separated, empty entries skipped)."""
    return [Path(p).expanduser() for p in os.environ.get("ATTNZOO_HUB_DIR", "").split(os.pathsep) if p.strip()]


def download_timeout(default: float) -> float:
    """Seconds one read of a download may wait: ``$ATTNZOO_DOWNLOAD_TIMEOUT``, else ``default``."""
    return env_seconds("ATTNZOO_DOWNLOAD_TIMEOUT", default)


def download_deadline(default: float) -> float:
    """Seconds a whole download may take: ``$ATTNZOO_DOWNLOAD_DEADLINE``, else ``default``."""
    return env_seconds("ATTNZOO_DOWNLOAD_DEADLINE", default)
