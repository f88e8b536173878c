"""Structured logs: one JSON object per line (python-json-logger), with the pipeline, the
event id and the model version on every line that concerns one.

Those fields come from a context, not from each call: the worker binds the pipeline and the
record's topic, partition and offset around each record it handles, the handler adds the
event id and the model version once it knows them (:func:`annotate`), and every line
logged meanwhile, by Driftline or by a library, carries them. A call may also pass them
as ``extra``. ``DRIFTLINE_LOG_FORMAT=text`` gives plain lines for a terminal. Entities
(card ids are personal data, and erasure cannot reach log files) appear as a keyed hash
unless ``DRIFTLINE_LOG_ENTITIES`` says ``plain`` or ``omit`` (:func:`entity_ref`).

>>> import io, json
>>> out = io.StringIO()
>>> logger = logging.getLogger("doctest.logs")
>>> handler = handler_for("json", out)
>>> logger.addHandler(handler)
>>> with bound(pipeline="fraud"):
...     annotate(event_id="e1", model_version="v0.200")
...     logger.warning("dead-lettered")
>>> line = json.loads(out.getvalue())
>>> line["message"], line["pipeline"], line["event_id"], line["model_version"], line["level"]
('dead-lettered', 'fraud', 'e1', 'v0.200', 'WARNING')
>>> logger.removeHandler(handler)
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import sys
from collections.abc import Iterator
from typing import IO, Any

from pythonjsonlogger.json import JsonFormatter

# How entities (card ids: personal data) appear in logs, which erasure cannot reach: as a
# keyed hash by default, the same entity always the same hash, so lines still group.
_ENTITIES = {"mode": "hash", "key": b""}

_CONTEXT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "driftline_log_context", default=None)

# "time" is ISO 8601 in UTC (the formatter's timestamp).
FORMAT = "{levelname}{name}{message}{process}"
RENAMED = {"levelname": "level", "name": "logger"}
KINDS = ("json", "text")
TEXT_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s %(message)s"


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Every line logged inside the block (in this task) carries ``fields``."""
    token = _CONTEXT.set({**(_CONTEXT.get() or {}), **fields})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def annotate(**fields: Any) -> None:
    """Add ``fields`` to the current block's context (the event id, once it is parsed)."""
    current = _CONTEXT.get()
    if current is not None:
        _CONTEXT.set({**current, **fields})


def entity_ref(entity: str) -> str | None:
    """``entity`` as logs show it (``DRIFTLINE_LOG_ENTITIES``): a keyed hash, the id itself,
    or nothing.

    >>> entity_ref("card-1") == entity_ref("card-1") != entity_ref("card-2")
    True
    >>> len(entity_ref("card-1")), "card" in entity_ref("card-1")
    (16, False)
    """
    mode = _ENTITIES["mode"]
    if mode == "plain":
        return entity
    if mode == "omit":
        return None
    return hashlib.blake2b(entity.encode(), key=_ENTITIES["key"], digest_size=8).hexdigest()


def set_entities(mode: str, key: str = "") -> None:
    if mode not in ("hash", "plain", "omit"):
        raise ValueError(f"DRIFTLINE_LOG_ENTITIES: {mode!r} is not hash, plain or omit")
    _ENTITIES.update(mode=mode, key=key.encode()[:64])


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record (a call's own ``extra`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_CONTEXT.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def formatter(kind: str) -> logging.Formatter:
    if kind == "text":
        return logging.Formatter(TEXT_FORMAT)
    return JsonFormatter(FORMAT, style="{", rename_fields=RENAMED, json_ensure_ascii=False,
                         timestamp="time")


def handler_for(kind: str, stream: IO[str] | None = None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(kind))
    handler.addFilter(ContextFilter())
    return handler


def configure(level: str, kind: str = "json", entities: str = "hash",
              entity_key: str = "") -> None:
    """Route every logger of this process to one handler on stderr, in ``kind`` format."""
    _check(kind)
    set_entities(entities, entity_key)
    root = logging.getLogger()
    root.handlers[:] = [handler_for(kind)]
    root.setLevel(level.upper())


def dict_config(level: str, kind: str = "json", entities: str = "hash",
                entity_key: str = "") -> dict[str, Any]:
    """The same as :func:`configure`, as a ``logging.config`` dictionary (Faust's worker
    sets its logging up from one)."""
    _check(kind)
    set_entities(entities, entity_key)
    fmt: dict[str, Any] = ({"format": TEXT_FORMAT} if kind == "text" else
                           {"()": JsonFormatter, "fmt": FORMAT, "style": "{",
                            "rename_fields": RENAMED, "json_ensure_ascii": False,
                            "timestamp": "time"})
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"driftline": fmt},
        "filters": {"context": {"()": ContextFilter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "driftline",
                                "filters": ["context"], "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
    }


def _check(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"DRIFTLINE_LOG_FORMAT: {kind!r} is not json or text")


__all__ = ["annotate", "bound", "configure", "dict_config", "entity_ref", "set_entities"]
