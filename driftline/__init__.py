"""Driftline: real-time machine learning on Kafka event streams.

Driftline installs top-level packages with common names beside this one (``streams``,
``agents``, ``online_models``, ``serving``, ``monitoring``). Another distribution may
install a package of the same name, and pip lets the later install overwrite or shadow the
earlier without a word; the import errors that follow would point nowhere useful. So each
of those packages imports this one first, and this checks, without importing them, that
each name resolves to Driftline's own package (its ``__init__.py`` carries :data:`MARK`),
and otherwise stops with the name, the path it resolved to, the distributions that install
it, and the fix: Driftline in an environment of its own.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__version__ = "0.1.0"

PACKAGES = ("streams", "agents", "online_models", "serving", "monitoring")
MARK = "import driftline  # checks that the top-level packages are Driftline's own"


class ShadowedPackage(ImportError):
    """A top-level package Driftline installs resolves to another distribution's."""


def check_packages(names: tuple[str, ...] = PACKAGES) -> None:
    """Raise :class:`ShadowedPackage` for the first of ``names`` that is not Driftline's."""
    for name in names:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        if origin and origin.endswith("__init__.py") and _marked(Path(origin)):
            continue
        where = origin or (", ".join(spec.submodule_search_locations or ()) if spec else "")
        raise ShadowedPackage(
            f"the top-level package {name!r} is not Driftline's own: it resolves to "
            f"{where or 'nothing'} ({_installers(name)}). Driftline installs the packages "
            f"{', '.join(PACKAGES)} beside 'driftline'; install it in a virtual environment "
            f"of its own (`python3 -m venv .venv && .venv/bin/pip install -e .`, as `make` "
            f"does), or uninstall the other distribution from this one.", name=name)


def _marked(path: Path) -> bool:
    try:
        return MARK in path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def _installers(name: str) -> str:
    from importlib.metadata import packages_distributions

    others = sorted(set(packages_distributions().get(name, [])) - {"driftline"})
    if others:
        return f"installed by {', '.join(others)}"
    return "from no other installed distribution: look at PYTHONPATH and the working directory"


check_packages()
