"""``python -m deepergat.cli``: the ``deepergat`` command (e.g. under torchrun)."""

from deepergat.cli.app import main

main()
