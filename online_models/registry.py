"""The model registry: every retrained model as a numbered version with its lineage (why it
was trained, on which data, which version it replaced) and a "champion" alias on the one to
serve. Why MLflow: versions, aliases, tags, runs and a UI that operators know, on a SQLite
file by default or a shared tracking server by URI. We use ``mlflow-skinny`` plus SQLAlchemy
and Alembic for its SQL store: 14 s and 150 MB to install instead of 50 s and 825 MB for
full ``mlflow``, whose server and model flavours we do not use. Models are plain pickles
logged as run artifacts, not pyfunc models (logging those infers an environment: seconds).
Each is signed (:mod:`driftline.adapters.signing`) when registered and verified, then
unpickled with the restricted unpickler, when loaded: one altered in the artifact store, or
registered before models were signed, is refused (:class:`UnverifiedVersion`, a 409).

Blocking code: call it from async code with ``asyncio.to_thread``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driftline.adapters.signing import cached_model_key, load_signed, sign
from driftline.errors import BlobRefused, Conflict, NotFound
from monitoring import metrics
from streams.declarations import model_name

# Set before mlflow is imported, and each still overridable from the environment: services
# send no usage telemetry, warn nothing where git is missing, print no run URLs to stdout
# (with a server), and log MLflow's warnings and errors but not its INFO lines (database
# creation and migrations). A tracking server that is down fails a call in seconds, not
# after MLflow's default 7 retries (about 4 minutes).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

if TYPE_CHECKING:
    from driftline.adapters.config import Settings

# Alembic logs every migration step at INFO when a database is created.
if logging.getLogger("alembic").level == logging.NOTSET:
    logging.getLogger("alembic").setLevel(logging.WARNING)

log = logging.getLogger(__name__)

CHAMPION = "champion"
_LINEAGE, _METRICS, _PREVIOUS = "driftline.lineage", "driftline.metrics", "driftline.previous"
_ARTIFACTS = "model"  # the run's artifact folder that is the version's source


@dataclass(frozen=True)
class Lineage:
    """Where a model version came from."""

    reason: str  # "drift", "manual", "bootstrap"
    evidence: dict[str, Any]  # the drift detection's evidence, or {"requested_by": ...}
    spec: str  # the model factory's import path (streams.declarations.model_name)
    declaration: dict[str, Any]  # the pipeline declaration as JSON
    topic: str  # the training topic it was trained from
    start_offset: int | None  # offsets of its training data (inclusive), None if unknown
    end_offset: int | None
    start_time: float | None  # event-time range of its training data
    end_time: float | None
    examples: int
    parent: int | None  # the version it was compared with and replaced (None for the first)

    def __post_init__(self) -> None:
        # A model factory is recorded by its import path (JSON, and rebuildable).
        object.__setattr__(self, "spec", model_name(self.spec))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Lineage:
        """Tolerant of missing and extra keys: versions made by hand or by older code load."""
        defaults = {"reason": "unknown", "evidence": {}, "spec": "", "declaration": {},
                    "topic": "", "examples": 0}
        return cls(**{f.name: data.get(f.name, defaults.get(f.name)) for f in fields(cls)})


@dataclass(frozen=True)
class ModelVersion:
    pipeline: str
    version: int  # the MLflow model version number
    lineage: Lineage
    metrics: dict[str, float]  # hold-out metrics (and champion_* of the one it beat)
    created_at: float  # epoch seconds
    champion: bool  # holds the champion alias now

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class UnverifiedVersion(BlobRefused, Conflict):
    """A registry version whose model cannot be verified: registered before models were
    signed, signed with another key, altered, or naming a class a model does not need."""


def _sanitise(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", part)


def _tolerate(code: str, call: Callable[[], Any]) -> Any:
    """``call()``, or None when it fails with MLflow error ``code``."""
    try:
        return call()
    except MlflowException as exc:
        if exc.error_code != code:
            raise
        return None


@contextmanager
def _init_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock beside a SQLite file while MLflow opens it: MLflow creates and
    migrates a fresh database without one, and two processes doing so at once fail."""
    if not uri.startswith("sqlite:///") or ":memory:" in uri:
        yield
        return
    db = Path(uri.removeprefix("sqlite:///").split("?")[0])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Registry:
    """Model versions of every pipeline in one MLflow tracking store and model registry."""

    def __init__(self, tracking_uri: str, artifact_root: Path | str, namespace: str = "", *,
                 signing_key: bytes | None = None, settings: Settings | None = None):
        """``signing_key`` signs and verifies the models; by default that of ``settings``
        (else of the environment's settings), read on first use."""
        self.tracking_uri = tracking_uri
        self.namespace = namespace
        self._signing_key = signing_key
        self._key_settings = settings
        # A server decides where artifacts go; a local store would default to ./mlruns.
        remote = tracking_uri.startswith(("http://", "https://", "databricks"))
        self._artifact_root = None if remote else Path(artifact_root).expanduser().resolve()
        with _init_lock("" if remote else tracking_uri):  # opens (creates, migrates) the DB
            self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            if not remote:
                self.client.search_experiments(max_results=1)
                self.client.search_registered_models(max_results=1)
        self._experiments: dict[str, str] = {}  # model name -> its experiment's id

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        return cls(settings.registry_uri, settings.registry_artifacts, settings.namespace,
                   settings=settings)

    @property
    def signing_key(self) -> bytes:
        if self._signing_key is None:
            from driftline.adapters.config import Settings

            self._signing_key = cached_model_key(self._key_settings or Settings.from_env())
        return self._signing_key

    def model_name(self, pipeline: str) -> str:
        """The registered model (and experiment) name: ``driftline.[<namespace>.]<pipeline>``."""
        return ".".join(_sanitise(p) for p in ("driftline", self.namespace, pipeline) if p)

    def register(self, pipeline: str, model: Any, lineage: Lineage,
                 metrics: Mapping[str, float]) -> ModelVersion:
        """A new version of ``pipeline``'s model (not promoted)."""
        name = self.model_name(pipeline)
        blob = sign(model, self.signing_key)  # fail before any write
        figures = {k: float(v) for k, v in metrics.items()}
        described = asdict(lineage)
        run = self.client.create_run(
            self._experiment(name), run_name=f"{pipeline}-{lineage.reason}",
            tags={"driftline.pipeline": pipeline, "driftline.reason": lineage.reason})
        run_id, now = run.info.run_id, int(time.time() * 1000)
        try:
            self.client.log_batch(
                run_id, metrics=[Metric(k, v, now, 0) for k, v in figures.items()],
                params=[Param(k, str(v)) for k, v in described.items()
                        if k not in ("evidence", "declaration")])  # those two are artifacts
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "model.pkl").write_bytes(blob)
                (Path(tmp) / "declaration.json").write_text(json.dumps(lineage.declaration,
                                                                       indent=2))
                (Path(tmp) / "lineage.json").write_text(json.dumps(described, indent=2))
                self.client.log_artifacts(run_id, tmp, _ARTIFACTS)
            mv = self.client.create_model_version(
                name, f"{run.info.artifact_uri}/{_ARTIFACTS}", run_id=run_id,
                tags={_LINEAGE: json.dumps(described), _METRICS: json.dumps(figures)})
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id)
        return self._convert(pipeline, mv, champion=False)

    def promote(self, pipeline: str, version: int) -> ModelVersion:
        """Make ``version`` the champion, remembering the one it replaces for a rollback."""
        name = self.model_name(pipeline)
        self._raw(pipeline, version)  # NotFound when unknown
        current = self._champion_version(name)
        if current is not None and current != version:
            self.client.set_model_version_tag(name, str(version), _PREVIOUS, str(current))
        self.client.set_registered_model_alias(name, CHAMPION, str(version))
        return self.get(pipeline, version)

    def rollback(self, pipeline: str) -> ModelVersion:
        """Make the champion before the current one (else its parent) the champion again.
        The tags are left alone, so that rolling back again goes one further back."""
        name = self.model_name(pipeline)
        current = self._champion_version(name)
        if current is None:
            raise Conflict(f"{pipeline}: no champion to roll back from")
        mv = self._raw(pipeline, current)
        previous = mv.tags.get(_PREVIOUS)
        target = int(previous) if previous else self._convert(pipeline, mv).lineage.parent
        if target is None:
            raise Conflict(f"{pipeline}: champion v{current} has no previous champion or "
                             "parent to roll back to")
        self._raw(pipeline, target)  # NotFound when it no longer exists
        self.client.set_registered_model_alias(name, CHAMPION, str(target))
        return self.get(pipeline, target)

    def champion(self, pipeline: str) -> ModelVersion | None:
        version = self._champion_version(self.model_name(pipeline))
        return None if version is None else self.get(pipeline, version)

    def get(self, pipeline: str, version: int) -> ModelVersion:
        """Version ``version`` of ``pipeline``'s model; NotFound naming it when unknown."""
        return self._convert(pipeline, self._raw(pipeline, version))

    def versions(self, pipeline: str) -> list[ModelVersion]:
        """Every version, newest first; [] when the pipeline has none."""
        name = self.model_name(pipeline)
        found, token = [], None
        while True:
            page = self.client.search_model_versions(
                f"name = '{name}'", order_by=["version_number DESC"], page_token=token)
            found += page
            token = page.token
            if not token:
                break
        # Search results carry no aliases: the champion is asked for separately.
        champion = self._champion_version(name) if found else None
        return [self._convert(pipeline, mv, champion=int(mv.version) == champion)
                for mv in found]

    def load(self, pipeline: str, version: int) -> Any:
        """The model of version ``version``, verified and unpickled; :class:`UnverifiedVersion`
        (counted and logged) when it cannot be verified."""
        mv = self._raw(pipeline, version)
        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_artifacts(mv.run_id, f"{_ARTIFACTS}/model.pkl", tmp)
            blob = Path(path).read_bytes()
        try:
            return load_signed(blob, self.signing_key)
        except BlobRefused as exc:
            metrics.BLOBS_REFUSED.labels(store="registry", reason=exc.reason).inc()
            if exc.reason == "unsigned":
                why = ("its model is not signed: registered before models were signed (or "
                       "planted); retrain to register a signed version")
            elif exc.reason == "bad_signature":
                why = ("its model's signature does not match: altered, or signed with "
                       "another key (DRIFTLINE_MODEL_KEY)")
            else:
                why = f"its model was refused: {exc}"
            message = f"{pipeline}: registry version {version} cannot be loaded: {why}"
            log.warning("%s", message)
            raise UnverifiedVersion(message, reason=exc.reason) from None

    # ---- MLflow plumbing -----------------------------------------------------------------

    def _experiment(self, name: str) -> str:
        """The experiment (and registered model) ``name``, created if missing; other
        processes may create them at the same moment, so "already exists" is success."""
        if name not in self._experiments:
            root = self._artifact_root
            location = None if root is None else (root / name).as_uri()
            _tolerate("RESOURCE_ALREADY_EXISTS",
                      lambda: self.client.create_experiment(name, artifact_location=location))
            _tolerate("RESOURCE_ALREADY_EXISTS", lambda: self.client.create_registered_model(
                name, description="Driftline pipeline model versions"))
            self._experiments[name] = self.client.get_experiment_by_name(name).experiment_id
        return self._experiments[name]

    def _raw(self, pipeline: str, version: int):
        mv = _tolerate("RESOURCE_DOES_NOT_EXIST", lambda: self.client.get_model_version(
            self.model_name(pipeline), str(version)))
        if mv is None:
            raise NotFound(f"{pipeline}: no registry version {version}", field="version")
        return mv

    def _champion_version(self, name: str) -> int | None:
        model = _tolerate("RESOURCE_DOES_NOT_EXIST", lambda: self.client.get_registered_model(name))
        version = model.aliases.get(CHAMPION) if model is not None else None
        return None if version is None else int(version)

    @staticmethod
    def _convert(pipeline: str, mv, champion: bool | None = None) -> ModelVersion:
        return ModelVersion(
            pipeline=pipeline, version=int(mv.version),
            lineage=Lineage.from_dict(json.loads(mv.tags.get(_LINEAGE, "{}"))),
            metrics=json.loads(mv.tags.get(_METRICS, "{}")),
            created_at=mv.creation_timestamp / 1000,
            champion=CHAMPION in (mv.aliases or []) if champion is None else champion)
