"""User-facing errors: one line naming the problem and the fix.

Every refusal of bad input in prunekit raises :class:`PrunekitError`; the CLI prints
``error: <problem> <fix>`` and exits with code 2 (no traceback unless ``--debug``).

The library names an option by its parameter name in backticks (`` `ratio` 1.5 is outside (0,
1)``); the CLI prints the flag of the command that ran in its place (``--ratio 1.5 ...``), so no
library message names a CLI flag.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PrunekitError(Exception):
    """A refusal of user input, with the fix spelled out."""

    exit_code = 2

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} {fix}".strip())


def suggest(name: str, choices: Iterable[str]) -> str:
    """' Did you mean X?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def check_positive_int(option: str, value: object) -> None:
    """Refuse anything but a whole number of 1 or more for ``option``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PrunekitError(f"`{option}` {value} is out of range.", f"Use a whole number of 1 or more for `{option}`.")


def check_choice(flag: str, value: str, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise naming the flag and the choices."""
    choices = list(choices)
    if value not in choices:
        raise PrunekitError(
            f"{flag} '{value}' is not known.{suggest(value, choices)}",
            f"Use one of: {', '.join(choices)}.",
        )
    return value
