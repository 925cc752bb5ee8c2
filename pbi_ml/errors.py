"""Errors with a short machine-readable reason.

`ItemError` fails one item (an image, a mask, a pair): the stage records `reason` in its table and
goes on. `AnnotationFileError` fails a whole source at once: the annotation file is malformed.
"""


class ItemError(Exception):
    """One item cannot be processed; `reason` is a short snake_case code stored in the data."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class AnnotationFileError(ValueError):
    """A malformed annotation file. The message names the file and what is wrong."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class ConfigError(ValueError):
    """A malformed pbi.yaml or stage configuration."""
