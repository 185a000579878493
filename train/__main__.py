"""``python -m jjepa.train`` (and ``torchrun -m jjepa.train``) runs the ``jjepa-train`` command."""

from jjepa.train.cli import main

main()
