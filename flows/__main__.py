"""`python -m flows` runs the full CLI (library commands plus run/demo)."""

from flows.cli import main

main()
