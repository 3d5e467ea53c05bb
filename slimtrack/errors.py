"""Errors that mean "the user asked for something we cannot do".

The CLI turns a UserError into one line on stderr and exit status 2; anything
else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: a flag, a path, a dataset, a tokenizer name."""


class DataError(UserError):
    """A dataset that cannot be read at all (as opposed to single bad records)."""
