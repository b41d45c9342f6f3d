"""The one exception type for problems a user can fix.

Every bad argument, bad dataset or unusable folder raises a ``UserError``
(or a subclass) whose message names the offending value or path; the CLI
prints it as one line and exits 2. Anything else is a bug and keeps its
traceback. ``UserError`` is a ``ValueError``, so callers that catch bad
values keep working.
"""
from __future__ import annotations


class UserError(ValueError):
    """A problem with the caller's input that the caller can fix; the message says which and how."""
