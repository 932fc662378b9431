"""`python -m crossent ...` runs the command line (needs the `cli` extra)."""

from crossent.cli import run

if __name__ == "__main__":
    run()
