"""Files the command line writes: never over an existing one unless the user says so."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from chequered.cli.main import UserError


def refuse_overwrite(paths: Iterable[Path], *, force: bool) -> None:
    """``UserError`` naming every path that exists already, unless ``force``.

    An import writes more than the file it is given (a race's qualifying beside
    it), so each one is checked before anything is written.
    """
    if force:
        return
    existing = [str(path) for path in paths if path.exists()]
    if existing:
        raise UserError(
            f"{', '.join(existing)}: already exists; nothing written (use --force to replace)"
        )
