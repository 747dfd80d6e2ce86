"""``python -m persevere`` is the ``persevere`` command."""

from .cli import main

main()
