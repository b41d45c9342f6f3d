"""The exception types for problems a user can fix.

Every bad argument, bad dataset or unusable folder raises a ``UserError``
(or a subclass) whose message names the offending value or path; the CLI
prints it as one line and exits with its ``exit_code`` (2). Anything else
is a bug and keeps its traceback. ``UserError`` is a ``ValueError``, so
callers that catch bad values keep working.
"""
from __future__ import annotations

import numbers

from unseen_fast.constants import MAX_SEED


class UserError(ValueError):
    """A problem with the caller's input that the caller can fix; the message says which and how."""
    exit_code = 2


class Stopped(UserError):
    """A run stopped on request (SIGTERM, a scheduler's pre-emption) after
    saving its checkpoints: exit 143 (128 + SIGTERM), as if the signal had
    ended it, so a scheduler tells pre-emption from bad input (2)."""
    exit_code = 143


def user_error_named(name: str) -> type[UserError] | None:
    """The UserError class (itself or a subclass) called ``name``: a worker
    process's error keeps its kind across the process boundary."""
    pending = [UserError]
    while pending:
        kind = pending.pop()
        if kind.__name__ == name:
            return kind
        pending.extend(kind.__subclasses__())
    return None


def check_seed(seed, what: str = "seed") -> int:
    """``seed`` if it is a whole number a run can derive its seeds from
    (constants.MAX_SEED), else a UserError naming it."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"{what} must be a whole number from 0 to {MAX_SEED}, got {seed!r}")
    return int(seed)


def plain_fields(config, *, ints=(), reals=(), kinds=()) -> None:
    """A config's numeric fields as Python int / float and its nested configs
    of their class, else one line naming the field: np.float32 rates failed
    when written to JSON, folds=2.0 after the run folder was made, and
    train=dict(...) with an AttributeError (a trial of the Python API)."""
    for name in ints:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise UserError(f"{name} must be a whole number, got {value!r}")
        setattr(config, name, int(value))
    for name in reals:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise UserError(f"{name} must be a number, got {value!r}")
        setattr(config, name, float(value))
    for name, kind in kinds:
        if not isinstance(getattr(config, name), kind):
            raise UserError(f"{name} must be a {kind.__name__}, got {getattr(config, name)!r}")
