"""Errors the user can fix. The CLI prints them as one line, without a traceback."""


class AgeCliError(Exception):
    """A problem with the user's input (file, row, key, value) that stops a command."""
