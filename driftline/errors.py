"""Driftline's own exceptions: the vocabulary every layer raises and the API maps to HTTP.

Each says what kind of failure it is, not where it happened, so that one place
(:mod:`serving.errors`) turns it into a status and a JSON body. They also subclass the
built-in error a caller outside Driftline would expect (``KeyError`` for a thing not
found, ``ValueError`` for a bad value), so ``except KeyError`` keeps working.

>>> try:
...     raise NotFound("fraud: no registry version 7", field="version")
... except KeyError as exc:
...     str(exc), exc.fields
('fraud: no registry version 7', {'version': 'fraud: no registry version 7'})
>>> Invalid({"amount": "must be positive"}).fields
{'amount': 'must be positive'}
>>> str(Invalid({"amount": "must be positive", "card": "required"}))
'amount: must be positive; card: required'
"""

from __future__ import annotations

import pickle


class DriftlineError(Exception):
    """The root of Driftline's exceptions; ``fields`` names each bad field with its reason
    (``$`` for the input as a whole), empty when no field is at fault."""

    fields: dict[str, str]

    def __init__(self, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = dict(fields or {})

    def __str__(self) -> str:  # KeyError's own str() would quote the message
        return self.message


class NotFound(DriftlineError, KeyError):
    """What was asked for does not exist (a registry version, a pipeline, a profile)."""

    def __init__(self, message: str, field: str | None = None,
                 fields: dict[str, str] | None = None) -> None:
        super().__init__(message, fields or ({field: message} if field else None))


class Conflict(DriftlineError, ValueError):
    """The request is well formed but the state forbids it (nothing to roll back to)."""


class Unavailable(DriftlineError):
    """A store or service this needs did not answer: not the caller's fault; retrying
    later may succeed."""


class Invalid(DriftlineError, ValueError):
    """The input is wrong in itself; ``fields`` says where and why."""

    def __init__(self, fields: dict[str, str], message: str | None = None) -> None:
        super().__init__(message or "; ".join(f"{k}: {v}" for k, v in fields.items()),
                         fields)


class TooLarge(Invalid):
    """The input is larger than a declared limit (a body, a batch)."""


class BlobRefused(DriftlineError, pickle.UnpicklingError):
    """A stored model blob or checkpoint was refused before it was loaded: unsigned, signed
    with another key or altered, or naming a class a model does not need
    (:mod:`driftline.adapters.signing`). ``reason`` says which: ``unsigned``,
    ``bad_signature``, ``forbidden``, ``unreadable``."""

    def __init__(self, message: str, reason: str = "unreadable") -> None:
        super().__init__(message)
        self.reason = reason
