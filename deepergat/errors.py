"""The project's exception types.

`DeepergatError` is what a user can cause and fix (a path, a format, a schema, a setting); the CLI
prints its message as one line on stderr and exits with code 2. `GeometryError` is a per-structure
problem that screening records as a status code instead of stopping.
"""

from __future__ import annotations

__all__ = ["STATUS_CODES", "DeepergatError", "GeometryError"]

#: docs/design.md's status table; the first failing check wins, in this order.
STATUS_CODES: dict[int, str] = {
    0: "ok",
    1: "zero atoms",
    2: "more atoms than --max-atoms",
    3: "element outside the model's table",
    4: "non-finite coordinates",
    5: "singular or non-finite lattice vectors on the periodic axes",
    6: "two atoms closer than --overlap-threshold",
    7: "non-finite prediction",
}


class DeepergatError(Exception):
    """A problem the user can fix; the message names the file, the item and the fix."""


class GeometryError(DeepergatError):
    """A structure whose geometry cannot be turned into a graph.

    Attributes:
        status: the docs/design.md status code (1-6).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = int(status)
