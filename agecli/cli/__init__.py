"""The `age` command. This package only parses arguments and renders results; the work is in the library."""
