"""The one exception type for bad user input: its message is a single sentence saying what is wrong and how to fix it."""


class UserError(Exception):
    """Bad input from the user (a path, a value, a file). The CLI prints it and exits with status 2."""
