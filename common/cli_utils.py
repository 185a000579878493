"""Small pieces both command-line tools share: logging set-up and user-facing error reporting."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Iterable

import click
from jjepa.common.errors import JJepaError


def setup_logging(verbose: int = 0) -> None:
    """Log to stderr: warnings and info by default, debug with ``-v``."""
    level = logging.DEBUG if verbose > 0 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("distributed", "numba", "fsspec", "matplotlib", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def progress_option(help: str = "Progress bars [default: when stderr is a terminal, not in batch logs]."):
    """``--progress/--no-progress``: by default on a terminal only, so a batch job's log gets no bar frames."""
    def resolve(ctx, param, value):
        return sys.stderr.isatty() if value is None else value

    return click.option("--progress/--no-progress", default=None, callback=resolve, help=help)


def parse_pairs(items: Iterable[str]) -> dict[str, str]:
    """``--set KEY=VALUE`` items as a dict of strings (the typed config converts them)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise JJepaError(f"--set expects KEY=VALUE, not {item!r}")
        out[key.strip()] = value.strip()
    return out


def reports_errors(func=None, *, interrupted: str | Callable[..., str] = "interrupted"):
    """Turn errors a user can act on into a one-line message and exit status 1 instead of a traceback.

    ``JJepaError`` keeps its message; an ``OSError`` (a folder that is a file, a full disk, no
    permission) names its path; Ctrl-C prints ``interrupted``, the command's word on what was kept
    and how to go on (or what ``interrupted(**the command's options)`` returns, when what was kept
    depends on how far the command got). Use as ``@reports_errors`` or ``@reports_errors(interrupted=...)``.
    """
    if func is None:
        return functools.partial(reports_errors, interrupted=interrupted)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except JJepaError as err:
            raise click.ClickException(str(err)) from None
        except OSError as err:
            raise click.ClickException(str(err)) from None
        except KeyboardInterrupt:
            raise click.ClickException(interrupted(**kwargs) if callable(interrupted) else interrupted) from None

    return wrapper
