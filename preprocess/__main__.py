"""``python -m jjepa.preprocess`` is ``jjepa-preprocess``."""

from jjepa.preprocess.cli import main

main()
