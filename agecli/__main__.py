"""python -m agecli: the same as the `age` command."""

from agecli.cli import main

if __name__ == "__main__":
    main()
