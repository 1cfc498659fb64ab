"""`python -m shadowft` runs the CLI."""

from shadowft.cli import main

main()
