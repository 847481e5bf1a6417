"""`python -m batch` runs the same CLI as the `autopilot-batch` script."""

from batch.cli import main

if __name__ == "__main__":
    main()
