"""Signed model blobs: every model, fallback, challenger, checkpoint and embedder that goes
to Redis or to the registry is pickled, signed with HMAC-SHA256, and verified before it is
unpickled, with an unpickler that admits only the classes a model needs.

Whoever can write Redis or the registry could otherwise run code in the worker and in
every API process (a pickle runs what it names). The key comes from the settings
(``DRIFTLINE_MODEL_KEY``, hex) or from ``<data dir>/secrets/model.key``, which
``driftline stack up`` writes (:func:`ensure_model_key`). A blob is::

    b"DL1" + HMAC-SHA256(key, payload) + payload      payload = pickle.dumps(obj, 5)

Refused: a blob without the header (an unsigned pickle), with a signature that does not
match (altered, or signed with another key), or, signed or not, one that names a global
outside the allow-list (:class:`RestrictedUnpickler`): River's classes, a few of numpy's
array constructors, a few of the standard library's containers, the project's model
classes and the user's pipeline modules. Never ``os``, ``subprocess``, ``builtins.eval``,
``importlib``, a module object, or a dunder attribute.

>>> key = bytes(32)
>>> load_signed(sign({"a": [1, 2.5]}, key), key)
{'a': [1, 2.5]}
>>> load_signed(pickle.dumps({"a": 1}), key)
Traceback (most recent call last):
...
driftline.errors.BlobRefused: unsigned blob: refused
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import hmac
import io
import logging
import os
import pickle
import secrets
import sys
import weakref
from pathlib import Path
from types import BuiltinFunctionType, FunctionType, ModuleType
from typing import Any

from driftline.adapters.config import MODEL_KEY_FILE, SECRETS_DIR, Settings
from driftline.errors import BlobRefused, Unavailable
from monitoring import metrics

log = logging.getLogger(__name__)

MAGIC = b"DL1"
_DIGEST = hashlib.sha256().digest_size  # 32
KEY_FILE = Path(SECRETS_DIR) / MODEL_KEY_FILE  # under the data dir

NO_KEY = ("no model signing key: run `driftline stack up` (which writes "
          "<data dir>/secrets/model.key) or set DRIFTLINE_MODEL_KEY")


class NoModelKey(Unavailable):
    """No model signing key is configured: nothing can be signed or loaded."""


# ---- the key ------------------------------------------------------------------------------

def key_path(settings: Settings) -> Path:
    """Where the local key file is: ``<data dir>/secrets/model.key``."""
    return Path(settings.data_dir) / KEY_FILE


def _parse(text: str, where: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise NoModelKey(f"the model signing key in {where} is not hex") from None
    if len(key) < 16:
        raise NoModelKey(f"the model signing key in {where} is shorter than 16 bytes")
    return key


def model_key(settings: Settings) -> bytes:
    """The HMAC key: ``settings.model_key`` (hex), else the key file; :class:`NoModelKey`
    (an ``Unavailable``) when there is neither."""
    if settings.model_key:
        return _parse(settings.model_key, "DRIFTLINE_MODEL_KEY")
    path = key_path(settings)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NoModelKey(f"{NO_KEY} (no {path})") from None
    return _parse(text, str(path))


@functools.lru_cache(maxsize=64)
def _cached_key(model_key_setting: str, data_dir: str) -> bytes:
    return model_key(Settings(data_dir=Path(data_dir), model_key=model_key_setting))


def cached_model_key(settings: Settings) -> bytes:
    """:func:`model_key`, read once per process for a given setting and data dir."""
    return _cached_key(settings.model_key, str(settings.data_dir))


def ensure_model_key(settings: Settings) -> Path:
    """Write a fresh random 32-byte key (hex) to the key file, unless it exists or
    ``settings.model_key`` is set; the key file's path either way. Idempotent: an existing
    key is never replaced (every stored blob is signed with it)."""
    path = key_path(settings)
    if settings.model_key or path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (secrets.token_hex(32) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # never over a key another process wrote meanwhile
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    _cached_key.cache_clear()
    return path


# ---- signing ------------------------------------------------------------------------------

def sign_bytes(payload: bytes, key: bytes) -> bytes:
    """``payload`` (a pickle) with the header and its signature."""
    return MAGIC + hmac.new(key, payload, hashlib.sha256).digest() + payload


def sign(obj: Any, key: bytes) -> bytes:
    """``obj`` pickled (protocol 5) and signed."""
    return sign_bytes(pickle.dumps(obj, protocol=5), key)


def verified_payload(blob: bytes, key: bytes) -> bytes:
    """The pickle inside ``blob`` once its signature is checked; :class:`BlobRefused`
    (reason ``unsigned`` or ``bad_signature``) otherwise."""
    blob = bytes(blob)
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + _DIGEST:
        raise BlobRefused("unsigned blob: refused", reason="unsigned")
    signature = blob[len(MAGIC):len(MAGIC) + _DIGEST]
    payload = blob[len(MAGIC) + _DIGEST:]
    if not hmac.compare_digest(signature, hmac.new(key, payload, hashlib.sha256).digest()):
        raise BlobRefused("blob signature does not match: refused", reason="bad_signature")
    return payload


def load_signed(blob: bytes, key: bytes) -> Any:
    """The object signed in ``blob``, verified, then unpickled with the restricted
    unpickler; :class:`BlobRefused` naming the reason otherwise (``unsigned``,
    ``bad_signature``, ``forbidden`` for a global outside the allow-list, ``unreadable``
    for a pickle that does not load)."""
    return restricted_loads(verified_payload(blob, key))


def restricted_loads(payload: bytes) -> Any:
    """Unpickle with :class:`RestrictedUnpickler` (no signature check: use
    :func:`load_signed`)."""
    try:
        return RestrictedUnpickler(io.BytesIO(payload)).load()
    except BlobRefused:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken or incompatible pickle
        raise BlobRefused(f"unreadable blob: {type(exc).__name__}: {exc}",
                          reason="unreadable") from exc


# ---- the restricted unpickler -----------------------------------------------------------

# Globals admitted by exact name.
_EXACT: dict[str, frozenset[str]] = {
    "builtins": frozenset({
        "bool", "bytearray", "bytes", "complex", "dict", "float", "frozenset", "int", "list",
        "range", "set", "slice", "str", "tuple", "NotImplemented", "Ellipsis"}),
    "collections": frozenset({"OrderedDict", "defaultdict", "deque", "Counter"}),
    "functools": frozenset({"partial"}),
    "random": frozenset({"Random"}),
    "datetime": frozenset({"datetime", "date", "time", "timedelta", "timezone"}),
    "decimal": frozenset({"Decimal"}),
    "fractions": frozenset({"Fraction"}),
    "uuid": frozenset({"UUID"}),
    "array": frozenset({"array", "_array_reconstructor"}),
    "copyreg": frozenset({"_reconstructor"}),
    "_codecs": frozenset({"encode"}),
    "math": frozenset({"inf", "nan"}),
    # numpy's arrays, dtypes, scalars and random generators; nothing that reads or writes
    "numpy": frozenset({"dtype", "ndarray"}),
    "numpy.core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy._core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy.core.numeric": frozenset({"_frombuffer"}),
    "numpy._core.numeric": frozenset({"_frombuffer"}),
    "numpy.random._pickle": frozenset({"__randomstate_ctor", "__bit_generator_ctor",
                                       "__generator_ctor"}),
}

# Classes (and functions, where ``True``) of these packages are admitted.
_PACKAGES: dict[str, bool] = {
    "river": True,               # River's models, statistics, metrics, distance functions
    "online_models": False,      # the learner and its parts
    "monitoring": False,         # the drift monitors
    "streams": False,            # the embedder, the schemas
    "agents.embedding": False,   # the embedding agent's checkpoint
    "streams.catalog": True,     # the examples' model factories
    "driftline_pipelines_": True,  # pipeline files loaded by path (streams.pipelines)
}
# Never, even under an admitted package: they read, write, import or start things.
_DENIED = ("river.datasets", "river.stream", "river.api", "online_models.registry",
           "online_models.retrainer", "online_models.retrain", "online_models.lifecycle",
           "streams.pipelines", "streams.generators")

_admitted: dict[tuple[str, str], Any] = {}
_user_packages: tuple[str, ...] | None = None


def _under(module: str, package: str) -> bool:
    if package.endswith("_"):  # a name prefix (driftline_pipelines_<file>_<digest>)
        return module.startswith(package)
    return module == package or module.startswith(package + ".")


def _pipeline_packages() -> tuple[str, ...]:
    """The modules of the loaded pipelines' model factories and record types: the user's
    own code (their package, unless it is one of Driftline's)."""
    global _user_packages
    if _user_packages is None:
        found: set[str] = set()
        try:
            from streams.pipelines import PIPELINES

            for spec in PIPELINES.values():
                for ref in (spec.model, *spec.candidates, spec.event_type, spec.label_type):
                    module = (ref.partition(":")[0] if isinstance(ref, str)
                              else getattr(ref, "__module__", None))
                    if not module:
                        continue
                    top = module.split(".")[0]
                    if top in ("streams", "online_models", "monitoring", "agents", "serving",
                               "driftline", "river", "numpy", "builtins") \
                            or top in sys.stdlib_module_names:
                        found.add(module)  # that module only
                    else:
                        found.add(top)
        except Exception:  # noqa: BLE001 - a pipeline that does not load admits nothing
            found = set()
        _user_packages = tuple(sorted(found))
    return _user_packages


def _safe_getattr(obj: Any, name: str) -> Any:
    """``getattr`` as a pickle uses it for a bound method: never a dunder name, a module,
    or an attribute of a module or a class."""
    if not isinstance(name, str) or name.startswith("__") or isinstance(obj, ModuleType | type):
        raise BlobRefused(f"forbidden attribute {name!r} in blob: refused", reason="forbidden")
    value = getattr(obj, name)
    if isinstance(value, ModuleType):
        raise BlobRefused(f"forbidden attribute {name!r} in blob: refused", reason="forbidden")
    return value


def _resolve(module: str, name: str) -> Any:
    """The global ``module.name`` if the allow-list admits it; :class:`BlobRefused`
    otherwise."""
    def refuse() -> BlobRefused:
        return BlobRefused(f"forbidden global {module}.{name} in blob: refused",
                           reason="forbidden")

    if module == "builtins" and name == "getattr":
        return _safe_getattr
    parts = name.split(".")
    exact = _exact(module, name)
    if not exact:
        if any(not p or p.startswith("__") for p in parts):
            raise refuse()
        functions = None
        for package, funcs in _PACKAGES.items():
            if _under(module, package):
                functions = funcs if functions is None else functions or funcs
        if functions is None and any(_under(module, p) for p in _pipeline_packages()):
            functions = True
        if functions is None or any(_under(module, d) for d in _DENIED):
            raise refuse()
    try:
        __import__(module)
        value: Any = sys.modules[module]
        for part in parts:
            value = getattr(value, part)
    except Exception as exc:  # noqa: BLE001 - missing module or attribute
        raise BlobRefused(f"unknown global {module}.{name} in blob: {exc}",
                          reason="unreadable") from exc
    if exact:
        return value
    if isinstance(value, ModuleType) or any(value is f for f in _FORBIDDEN_VALUES):
        raise refuse()
    if isinstance(value, type):
        return value
    if functions and isinstance(value, FunctionType | BuiltinFunctionType | functools.partial):
        return value
    raise refuse()


def _exact(module: str, name: str) -> bool:
    return name in _EXACT.get(module, ())


_FORBIDDEN_VALUES = tuple(getattr(builtins, n) for n in (
    "eval", "exec", "compile", "getattr", "setattr", "delattr", "__import__", "open",
    "input", "breakpoint", "globals", "locals", "vars"))


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits only the globals a model needs (see the module's doc)."""

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        try:
            return _admitted[key]
        except KeyError:
            pass
        value = _resolve(module, name)
        _admitted[key] = value
        return value


# The settings each client of connect() was made with: the stores built on it sign and
# verify with their key, so that no caller has to pass one.
client_settings: weakref.WeakKeyDictionary[Any, Settings] = weakref.WeakKeyDictionary()


def signing_key_of(client: Any) -> bytes:
    """The model signing key for the stores on ``client``: that of the settings it was
    made with by :func:`connect`, else of the environment's settings."""
    settings = client_settings.get(client)
    return cached_model_key(settings if settings is not None else Settings.from_env())


class Refusals:
    """Counts and logs a refused blob once (per store and blob), not at each retry."""

    def __init__(self, store: str, where: str) -> None:
        self.store, self.where = store, where
        self._seen: set[str] = set()

    def refused(self, exc: BlobRefused, blob: bytes, what: str = "") -> None:
        marker = hashlib.blake2b(bytes(blob), digest_size=16).hexdigest()
        if marker in self._seen:
            return
        if len(self._seen) > 256:
            self._seen.clear()
        self._seen.add(marker)
        metrics.BLOBS_REFUSED.labels(store=self.store, reason=exc.reason).inc()
        log.warning("%s: refused the %s%s in Redis (%s): %s", self.where, self.store,
                    f" {what}" if what else "", exc.reason, exc)
