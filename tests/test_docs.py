"""The documentation that is generated from the code matches the code."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_cli_reference_is_up_to_date():
    spec = importlib.util.spec_from_file_location("make_cli_reference", DOCS / "make_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.reference()
    assert "jjepa-preprocess cluster" in expected and "jjepa-train finetune" in expected
    assert (DOCS / "cli.md").read_text() == expected, "docs/cli.md is stale: run python docs/make_cli_reference.py"
