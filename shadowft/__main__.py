"""`python -m shadowft` runs the same CLI as the `shadowft` console script."""

from shadowft.cli import main

if __name__ == "__main__":
    main()
