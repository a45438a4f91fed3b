"""python -m agecli: the same as the `age` command."""

from agecli.cli.main import main

if __name__ == "__main__":
    main()
