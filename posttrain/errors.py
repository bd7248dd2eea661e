"""Errors caused by the user's input (recipe, data, paths). The CLI prints their message
as one line and exits 2; anything else is a bug and keeps its traceback."""


class PosttrainError(Exception):
    """Bad input: the message says what and where, in one line."""


class DataError(PosttrainError):
    """A data file that cannot be used (missing, malformed rows, wrong columns)."""
