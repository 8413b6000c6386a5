"""``python -m edgetl.cli`` (what torchrun launches): the ``edgetl`` command."""

from edgetl.cli import main

main()
