"""The ``--branches`` YAML of the generic reader: branch/dataset names, checked with one-line errors.

A malformed file (bad YAML, not a mapping, a list where a name belongs) stops with the file, the
line and the problem, never a traceback. The file looks like::

    tree: Events
    px: pf_px
    py: pf_py
    pz: pf_pz
    energy: pf_e
    label: is_signal
    classes: [QCD, top]        # or "QCD,top"
"""

from __future__ import annotations

from pathlib import Path

import yaml
from jjepa.common.errors import JJepaError

#: Keys whose value is one branch/dataset name.
NAME_KEYS: tuple[str, ...] = ("tree", "px", "py", "pz", "pt", "eta", "phi", "energy", "label", "counts")
#: Every key the file may hold.
KEYS: tuple[str, ...] = (*NAME_KEYS, "classes")


def _parse(path: str) -> object:
    """The YAML document of ``path``, or a ``JJepaError`` naming the file, line and problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise JJepaError(f"{path}: not a text (YAML) file; --branches expects a YAML mapping of names") from None
    except OSError as err:
        raise JJepaError(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise JJepaError(f"{path}: not valid YAML{where}: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise JJepaError(f"{path}: not valid YAML: {err}") from None


def _classes(path: str, value) -> tuple[str, ...]:
    """Class names from a YAML list or a comma-separated string."""
    if isinstance(value, str):
        return tuple(c.strip() for c in value.split(",") if c.strip())
    if isinstance(value, list) and all(isinstance(c, str | int) and not isinstance(c, bool) for c in value):
        return tuple(str(c) for c in value)
    raise JJepaError(f"{path}: 'classes' must be a list of names or a comma-separated string, not {value!r}")


def load_branches(path: str) -> dict:
    """The names in a ``--branches`` YAML file, checked; keys as in ``GenericOptions``.

    Returns:
        dict key → name (str) for the keys present, and ``classes`` as a tuple of str if given.
        An empty file gives an empty dict.

    Raises:
        JJepaError: unreadable or invalid YAML (with line and column), a document that is not a
            mapping, an unknown key, or a value of the wrong kind; each message names the file.
    """
    path = str(path)
    loaded = _parse(path)
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise JJepaError(f"{path}: expected a mapping of keys to branch names (e.g. 'px: pf_px'), "
                         f"found a {type(loaded).__name__}; allowed keys: {list(KEYS)}")
    unknown = sorted(str(k) for k in loaded if k not in KEYS)
    if unknown:
        raise JJepaError(f"{path}: unknown keys {unknown}; allowed: {list(KEYS)}")
    values: dict = {}
    for key, value in loaded.items():
        if key == "classes":
            values[key] = _classes(path, value)
        elif isinstance(value, str) and value.strip():
            values[key] = value.strip()
        else:
            raise JJepaError(f"{path}: {key!r} must be one branch/dataset name (a string), not {value!r}"
                             + (" (quote it)" if isinstance(value, int | float) else ""))
    return values
