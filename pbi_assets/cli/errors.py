"""How `pbi` reports an error: one or two lines naming the problem and the file or field (the
user's input), or the unexpected error with a pointer to `--debug`."""

from __future__ import annotations

import sys


class UserError(Exception):
    """A problem in the user's input (a file, an argument): printed as its message, no traceback."""


def is_user_error(exc: BaseException) -> bool:
    """An error in what the user gave: the config, an annotation or input file, the SQL, an argument."""
    from pbi_ml.errors import AnnotationFileError, ConfigError

    kinds: tuple[type[BaseException], ...] = (UserError, ConfigError, AnnotationFileError, FileNotFoundError)
    if "dagster" in sys.modules:  # a --run-config that Dagster's config schema rejects
        import dagster as dg

        kinds += (dg.DagsterInvalidConfigError,)
    return isinstance(exc, kinds)


def error_lines(exc: BaseException, command: str | None = None) -> list[str]:
    """`exc` in at most two lines: `pbi <command>: <what>: <first line>`, then the rest in one line."""
    from pbi_ml.config import default_config_path
    from pbi_ml.errors import AnnotationFileError, ConfigError

    message = str(exc)
    if isinstance(exc, ConfigError):
        config = default_config_path()
        if str(config) not in message and str(config.resolve()) not in message:
            message = f"{config}: {message}"  # name the file the error is in
        kind = "config error"
    elif isinstance(exc, AnnotationFileError):
        kind = "annotation file error"
    elif isinstance(exc, UserError | FileNotFoundError):
        kind = ""
    elif is_user_error(exc):
        kind = "invalid run config"
    else:
        kind = f"unexpected error ({exc.__class__.__name__})"
    lines = [line.strip() for line in message.splitlines() if line.strip().strip("^").strip()]
    head = f"pbi {command}: " if command else "pbi: "
    first = head + (f"{kind}: " if kind else "") + (lines[0] if lines else exc.__class__.__name__)
    rest = " ".join(lines[1:])
    if not is_user_error(exc):
        rest = (rest[:200] + " " if rest else "") + "(rerun with `pbi --debug ...` for the traceback)"
    elif len(rest) > 300:
        rest = rest[:297] + "..."
    return [first, f"  {rest}"] if rest else [first]


def require_source(declared: list[str], source: str) -> None:
    if source not in declared:
        raise UserError(f"unknown source {source!r}; declared in the config: {', '.join(declared)}")
