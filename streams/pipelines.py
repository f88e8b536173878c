"""The declared pipelines, by name: loaded from the user's modules and installed packages.

Pipelines are declared outside Driftline, in a module of the user's own project: every
module-level :class:`~streams.declarations.PipelineSpec` of the module is a pipeline.
Driftline finds them

* in the modules named by ``DRIFTLINE_PIPELINES``: comma-separated import names
  (``myco.pipelines``) or paths of Python files (``./pipelines/payments.py``);
* in installed packages, through the entry-point group ``driftline.pipelines`` (each entry
  names a module). Driftline's own examples (fraud, pricing, agrawal, phishing, bananas)
  are loaded this way, from its own ``pyproject.toml``.

They are loaded on first use, once per process. A module that cannot be imported, a
declaration that does not validate, or two pipelines with one name stop the start with a
:class:`PipelineLoadError` naming the module and the reason.

>>> sorted(PIPELINES)
['agrawal', 'bananas', 'fraud', 'fraud_knn', 'phishing', 'pricing']
>>> PIPELINES["pricing"].task
'regression'
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

from streams.declarations import PipelineSpec

ENTRY_POINT_GROUP = "driftline.pipelines"
ENVIRONMENT = "DRIFTLINE_PIPELINES"  # read by Settings too (driftline.adapters.config)


class PipelineLoadError(RuntimeError):
    """A pipeline module could not be loaded, or what it declares is wrong."""


def load(sources: str = "") -> dict[str, PipelineSpec]:
    """The pipelines of the installed packages' entry points, then of ``sources`` (import
    names or file paths, comma-separated), by name."""
    return {name: spec for name, (spec, _) in declarations(sources).items()}


def declarations(sources: str = "") -> dict[str, tuple[PipelineSpec, str]]:
    """:func:`load`'s pipelines, each with the module that declares it (its file, for a
    module loaded by path)."""
    found: dict[str, tuple[PipelineSpec, str]] = {}
    homes: dict[str, str] = {}
    origins = [(f"entry point {ep.name} = {ep.value}", ep.value)
               for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)]
    origins += [(s, s) for s in (part.strip() for part in sources.split(",")) if s]
    for where, source in origins:
        module = _module(where, source)
        specs = [v for v in vars(module).values() if isinstance(v, PipelineSpec)]
        if not specs:
            raise PipelineLoadError(f"{where}: the module declares no PipelineSpec")
        home = (getattr(module, "__file__", None) or module.__name__) if _is_path(source) \
            else module.__name__
        for spec in specs:
            if spec.name not in found:
                found[spec.name], homes[spec.name] = (spec, where), home
            elif found[spec.name][0] is not spec:  # the same one imported is no new pipeline
                raise PipelineLoadError(f"pipeline {spec.name!r} is declared twice: by "
                                        f"{found[spec.name][1]} and by {where}")
    return {name: (spec, homes[name]) for name, (spec, _) in found.items()}


def _is_path(source: str) -> bool:
    return source.endswith(".py") or os.sep in source or "/" in source


def _module(where: str, source: str) -> ModuleType:
    try:
        if _is_path(source):
            return _from_file(Path(source))
        return importlib.import_module(source)
    except PipelineLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - an import runs the user's code: any error
        # A declaration that does not validate raises here, naming the field.
        raise PipelineLoadError(f"{where}: {type(exc).__name__}: {exc}") from exc


def _from_file(path: Path) -> ModuleType:
    """Import a file as a module, under a name of its path (the same in every process, so
    that its factories pickle by reference)."""
    path = path.expanduser().resolve()
    if not path.is_file():
        raise PipelineLoadError(f"{path}: no such file")
    digest = hashlib.blake2b(str(path).encode(), digest_size=6).hexdigest()
    name = f"driftline_pipelines_{path.stem.replace('-', '_')}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


class Pipelines(Mapping[str, PipelineSpec]):
    """The declared pipelines, loaded on first use from ``DRIFTLINE_PIPELINES`` and the
    entry points."""

    def __init__(self) -> None:
        self._declared: dict[str, tuple[PipelineSpec, str]] | None = None

    def _loaded(self) -> dict[str, tuple[PipelineSpec, str]]:
        if self._declared is None:
            self._declared = declarations(os.environ.get(ENVIRONMENT, ""))
        return self._declared

    def __getitem__(self, name: str) -> PipelineSpec:
        return self._loaded()[name][0]

    def home(self, name: str) -> str:
        """The module that declares pipeline ``name`` (its file, for one loaded by path)."""
        return self._loaded()[name][1]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())

    def reload(self) -> None:
        """Load again on next use (after ``DRIFTLINE_PIPELINES`` changed: tests)."""
        self._declared = None


PIPELINES = Pipelines()
