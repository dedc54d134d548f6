"""`python -m polewatch` is the `polewatch` command (the demo starts its children this way)."""

from .cli import main

main()
