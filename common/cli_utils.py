"""Small pieces both command-line tools share: logging set-up and user-facing error reporting."""

from __future__ import annotations

import functools
import logging

import click
from jjepa.common.errors import JJepaError


def setup_logging(verbose: int = 0) -> None:
    """Log to stderr: warnings and info by default, debug with ``-v``."""
    level = logging.DEBUG if verbose > 0 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("distributed", "numba", "fsspec", "matplotlib", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def reports_errors(func):
    """Turn ``JJepaError`` into a one-line message and exit status 1 instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except JJepaError as err:
            raise click.ClickException(str(err)) from None
        except KeyboardInterrupt:
            raise click.ClickException("interrupted; complete shards are kept, rerun with --resume to finish") from None

    return wrapper
