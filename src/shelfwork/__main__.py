"""`python -m shelfwork` runs the command line, like the `shelfwork` script."""

from .cli import main

main()
