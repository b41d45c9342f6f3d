"""Errors the data layer raises: always naming the offending path or value."""
from __future__ import annotations

from unseen_fast.errors import UserError


class DataError(UserError):
    """A dataset problem a user can fix (missing folder, empty class, bad list line)."""


class BadImageError(DataError):
    """An image file that cannot be read or decoded.

    Attributes
    ----------
    path : str
        The file, as a path the user can open.
    sample_id : int or None
        Its sample id in the index, when known.
    reason : str
        What the decoder said.
    """

    def __init__(self, path: str, reason: str, sample_id: int | None = None):
        self.path, self.reason, self.sample_id = str(path), reason, sample_id
        where = f" (sample id {sample_id})" if sample_id is not None else ""
        super().__init__(f"cannot decode image {self.path}{where}: {reason}")

    def __reduce__(self):  # survive DataLoader worker -> main process pickling
        return (BadImageError, (self.path, self.reason, self.sample_id))
