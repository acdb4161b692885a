"""The one exception type for problems with the user's input.

Everything raised as :class:`InputError` is printed by the CLI as a single line and the process
exits with status 2; any other exception is a bug and keeps its traceback (shown with --debug).
"""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """A problem with a file, a field or an option that the user can fix."""


def input_error(source: str | Path | None, field: str | None, problem: str, fix: str = "") -> InputError:
    """Build an :class:`InputError` whose message names the file, the field and the fix.

    >>> str(input_error("p.star", "rlnImageName", "column missing", "re-export from RELION"))
    'p.star: rlnImageName: column missing; re-export from RELION'
    """
    parts = [str(part) for part in (source, field) if part]
    message = ": ".join(parts + [problem]) if parts else problem
    if fix:
        message = f"{message}; {fix}"
    return InputError(message)
