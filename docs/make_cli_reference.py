"""Write docs/cli.md, the command-line reference, from the commands' own ``--help``.

Rerun after changing an option: ``python docs/make_cli_reference.py``. A test checks that
docs/cli.md matches what this script writes, so the reference cannot drift from the code.
"""

from __future__ import annotations

from pathlib import Path

import click

#: Fixed help width, so the reference does not depend on the terminal that made it.
WIDTH = 100
OUT = Path(__file__).with_name("cli.md")


def _context(command: click.Command, name: str, parent: click.Context | None = None) -> click.Context:
    return click.Context(command, info_name=name, parent=parent, terminal_width=WIDTH, max_content_width=WIDTH,
                         **command.context_settings)


def _sections(group: click.Group, name: str) -> list[str]:
    parent = _context(group, name)
    parts = [f"## `{name}`\n\n```text\n{group.get_help(parent)}\n```\n"]
    for sub in group.list_commands(parent):
        command = group.get_command(parent, sub)
        parts.append(f"### `{name} {sub}`\n\n```text\n{command.get_help(_context(command, sub, parent))}\n```\n")
    return parts


def reference() -> str:
    """The whole reference as Markdown: both programs, every subcommand's ``--help``."""
    from jjepa.preprocess.cli import main as preprocess_main
    from jjepa.train.cli import main as train_main

    parts = ["# Command-line reference\n",
             "Generated from `--help` by `python docs/make_cli_reference.py`; do not edit by hand.\n"]
    parts += _sections(preprocess_main, "jjepa-preprocess")
    parts += _sections(train_main, "jjepa-train")
    return "\n".join(parts)


if __name__ == "__main__":
    OUT.write_text(reference())
