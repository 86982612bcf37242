"""`python -m addunet_edge` runs the CLI."""

from .cli import main

main()
