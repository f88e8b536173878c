"""The one configuration object, read from the environment.

Every setting has a documented default so that a fresh machine runs with no
configuration at all; each is overridden by the ``DRIFTLINE_*`` variable named
in its comment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from urllib.parse import quote

_REPO_ROOT = Path(__file__).resolve().parents[2]  # driftline/adapters/config.py


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True)
class Settings:
    # Where the local stack keeps its data, logs and pid files (DRIFTLINE_DATA_DIR).
    data_dir: Path = _REPO_ROOT / ".driftline"
    # Where resolved Kafka jars are cached, outside the repository (DRIFTLINE_CACHE_DIR).
    cache_dir: Path = Path.home() / ".cache" / "driftline"
    # Apache Kafka version whose jars are resolved from Maven Central (DRIFTLINE_KAFKA_VERSION).
    kafka_version: str = "3.9.1"
    # Loopback ports of the local stack (DRIFTLINE_KAFKA_PORT, _CONTROLLER_PORT, _REDIS_PORT,
    # _MILVUS_PORT).
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    redis_port: int = 6379
    milvus_port: int = 19530
    # Heap of the local broker's JVM (DRIFTLINE_KAFKA_HEAP).
    kafka_heap: str = "512m"
    # Where clients find Kafka and Redis; default to the local stack (DRIFTLINE_KAFKA_BOOTSTRAP,
    # DRIFTLINE_REDIS_URL).
    kafka_bootstrap: str = ""
    redis_url: str = ""
    # Where clients find Milvus: the local Milvus Lite server, or a Milvus server's URI
    # (DRIFTLINE_MILVUS_URI).
    milvus_uri: str = ""
    # Prefix of every topic, Redis key and consumer group, so that several deployments (or
    # test runs) can share one broker and one Redis; empty means none (DRIFTLINE_NAMESPACE).
    namespace: str = ""
    # The user's pipeline modules, loaded beside the installed packages' entry points
    # (streams.pipelines): import names or paths of .py files, comma-separated
    # (DRIFTLINE_PIPELINES). Child processes get it through to_env().
    pipelines: str = ""
    # Partitions of the keyed topics (events, labels, predictions, the join) of a pipeline
    # whose events and labels topics do not exist yet: existing ones keep their counts and
    # the rest follow them (driftline.adapters.kafka_admin.PipelinePartitions). The training topic
    # always has one, because one learner must see every label (DRIFTLINE_PARTITIONS).
    partitions: int = 4
    # The stream worker's HTTP address, which serves its /metrics (DRIFTLINE_WORKER_HOST,
    # DRIFTLINE_WORKER_PORT).
    worker_host: str = "127.0.0.1"
    worker_port: int = 6066
    # Where the API's dashboard reads the worker's metrics; default: the worker's address
    # on this host (DRIFTLINE_WORKER_METRICS_URL; compose: http://worker:6066/metrics).
    worker_metrics_url: str = ""
    # The scoring API (DRIFTLINE_API_HOST, DRIFTLINE_API_PORT).
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    # The served model (a few KB: the model and the fallback) is published every N learned
    # labels or T seconds, whichever comes first (DRIFTLINE_SNAPSHOT_EVERY,
    # DRIFTLINE_SNAPSHOT_SECONDS); the learner's whole checkpoint (drift windows, offsets:
    # up to a MB) every T seconds (DRIFTLINE_CHECKPOINT_SECONDS). A crash costs re-learning
    # what came after the checkpoint, from the training log.
    snapshot_every: int = 200
    snapshot_seconds: float = 0.1
    checkpoint_seconds: float = 5.0
    # How often scoring processes look for a newer snapshot (DRIFTLINE_MODEL_REFRESH_SECONDS);
    # the worker whose learner published one serves it at once.
    model_refresh_seconds: float = 0.2
    # Each agent takes what has arrived, up to N records at a time; the learner's tail of
    # the training log waits up to T seconds for a batch (DRIFTLINE_WORKER_BATCH,
    # DRIFTLINE_WORKER_BATCH_SECONDS): one Redis round trip and one flush per batch.
    worker_batch: int = 500
    worker_batch_seconds: float = 0.05
    # A worker asked to stop (SIGTERM) that has not stopped cleanly after this many seconds
    # (a batch held while a store is down) exits without committing what it holds, which
    # is handled again at its next start (DRIFTLINE_SHUTDOWN_SECONDS; an orchestrator's
    # grace period is often 30 s).
    shutdown_seconds: float = 25.0
    # Window of the rolling prequential metrics, in labels (DRIFTLINE_METRIC_WINDOW).
    metric_window: int = 2000
    # The model registry: an MLflow tracking URI, by default a SQLite file in the data dir
    # (DRIFTLINE_REGISTRY_URI), and where a local registry keeps its artifacts
    # (DRIFTLINE_REGISTRY_ARTIFACTS; default: <data dir>/registry/artifacts).
    registry_uri: str = ""
    registry_artifacts: str = ""
    # How often the learner checks that it serves the registry's champion, and swaps it in
    # if not (a promotion whose control event was lost) (DRIFTLINE_RECONCILE_SECONDS).
    reconcile_seconds: float = 30.0
    # Labeled-event vectors are written to Milvus in batches of N or every T seconds
    # (DRIFTLINE_VECTOR_BATCH, DRIFTLINE_VECTOR_FLUSH_SECONDS).
    vector_batch: int = 500
    vector_flush_seconds: float = 2.0
    # After this many rows written, the collections are flushed: Milvus Lite searches rows
    # not yet flushed by brute force (its search time grew by 4 ms per 1,000 such rows
    # here); a Milvus server seals its growing segment early (DRIFTLINE_VECTOR_SEAL_ROWS).
    vector_seal_rows: int = 2000
    # Time budget of one neighbour-feature search; past it the feature takes its default
    # and scoring goes on (DRIFTLINE_NEIGHBOUR_TIMEOUT_SECONDS).
    neighbour_timeout_seconds: float = 0.25
    # Any other call to Milvus fails after this long (DRIFTLINE_MILVUS_TIMEOUT_SECONDS).
    milvus_timeout_seconds: float = 30.0
    # ---- the scoring API -------------------------------------------------------------
    # Processes of `driftline serve`, accepting on one socket (DRIFTLINE_API_WORKERS).
    api_workers: int = 1
    # Bearer tokens, comma-separated `name:role:sha256hex` entries (role: scorer or admin;
    # `driftline token` makes one). Only hashes are configured, never tokens. Empty: no
    # authentication, and the API says so in its log (DRIFTLINE_API_TOKENS).
    api_tokens: str = ""
    # Paths served without a token, comma-separated (DRIFTLINE_API_OPEN_PATHS).
    api_open_paths: str = "/healthz,/metrics,/openapi.json,/dashboard,/dashboard/data"
    # TLS: a PEM certificate (chain) and its key; both set means HTTPS only
    # (DRIFTLINE_API_TLS_CERT, DRIFTLINE_API_TLS_KEY).
    api_tls_cert: str = ""
    api_tls_key: str = ""
    # Largest request body; past it, a 413 (DRIFTLINE_API_MAX_BODY_BYTES).
    api_max_body_bytes: int = 1024 * 1024
    # Most events in one batch request (DRIFTLINE_API_BATCH_MAX).
    api_batch_max: int = 500
    # Time budget of one score for its features (Redis, the neighbour search); past it the
    # pipeline's fallback model answers, marked degraded (DRIFTLINE_API_DEADLINE_SECONDS).
    api_deadline_seconds: float = 0.1
    # Features and contributions in a score's explanation (DRIFTLINE_API_EXPLAIN_TOP).
    api_explain_top: int = 5
    # The feature cache in front of Redis: entities held, and for how long. A cached state
    # may miss events of its last TTL; 0 turns the cache off
    # (DRIFTLINE_FEATURE_CACHE_SIZE, DRIFTLINE_FEATURE_CACHE_TTL_SECONDS).
    feature_cache_size: int = 10_000
    feature_cache_ttl_seconds: float = 0.5
    # The inference cache: scores and explanations by model snapshot and feature vector
    # (about 2 KB an entry); 0 turns it off (DRIFTLINE_INFERENCE_CACHE_SIZE).
    inference_cache_size: int = 10_000
    # The retrainer's HTTP port, which serves its /metrics (DRIFTLINE_RETRAINER_PORT).
    retrainer_port: int = 6067
    # ---- trust boundaries (README, "Security") ---------------------------------------
    # The HMAC-SHA256 key (hex) that signs every model blob and checkpoint; each is
    # verified before it is loaded. Empty: the key file <data dir>/secrets/model.key, which
    # `driftline stack up` writes (DRIFTLINE_MODEL_KEY).
    model_key: str = ""
    # Redis's ACL user and its password. Empty password: the file
    # <data dir>/secrets/redis.password, which `driftline stack up` writes, read by
    # from_env() (DRIFTLINE_REDIS_USERNAME, DRIFTLINE_REDIS_PASSWORD). With a password and
    # no DRIFTLINE_REDIS_URL, the derived URL carries the user and the password; with
    # neither, it is the local stack's without a password (a Redis started before the ACL).
    redis_username: str = "driftline"
    redis_password: str = ""
    # Kafka client security, passed to every client (confluent-kafka and Faust's aiokafka):
    # PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; the SASL mechanism (PLAIN, SCRAM-SHA-256
    # or SCRAM-SHA-512) and its credentials; a CA file for TLS
    # (DRIFTLINE_KAFKA_SECURITY_PROTOCOL, DRIFTLINE_KAFKA_SASL_MECHANISM,
    # DRIFTLINE_KAFKA_SASL_USERNAME, DRIFTLINE_KAFKA_SASL_PASSWORD, DRIFTLINE_KAFKA_CA_FILE).
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    kafka_ca_file: str = ""
    # Operators' retrain requests accepted per pipeline in an hour; more are refused
    # (DRIFTLINE_RETRAIN_REQUESTS_PER_HOUR).
    retrain_requests_per_hour: int = 6
    # Log level of the services (DRIFTLINE_LOG_LEVEL), and their format: json (one object
    # a line, with the pipeline, event id and model version where a line concerns one) or
    # text (DRIFTLINE_LOG_FORMAT).
    log_level: str = "info"
    log_format: str = "json"
    # How entities appear in logs: hash (a blake2b hash keyed by DRIFTLINE_LOG_ENTITY_KEY:
    # set a secret), plain or omit (DRIFTLINE_LOG_ENTITIES, DRIFTLINE_LOG_ENTITY_KEY).
    log_entities: str = "hash"
    log_entity_key: str = ""

    def __post_init__(self) -> None:
        if not self.kafka_bootstrap:
            object.__setattr__(self, "kafka_bootstrap", f"127.0.0.1:{self.kafka_port}")
        if not self.redis_url:
            credentials = ""
            if self.redis_password:
                credentials = (f"{quote(self.redis_username, safe='')}:"
                               f"{quote(self.redis_password, safe='')}@")
            object.__setattr__(self, "redis_url",
                               f"redis://{credentials}127.0.0.1:{self.redis_port}/0")
        if not self.worker_metrics_url:
            host = "127.0.0.1" if self.worker_host in ("0.0.0.0", "::", "") else self.worker_host
            object.__setattr__(self, "worker_metrics_url",
                               f"http://{host}:{self.worker_port}/metrics")
        if not self.milvus_uri:
            object.__setattr__(self, "milvus_uri", f"http://127.0.0.1:{self.milvus_port}")
        registry = Path(self.data_dir) / "registry"
        if not self.registry_uri:
            object.__setattr__(self, "registry_uri", f"sqlite:///{registry / 'mlflow.db'}")
        if not self.registry_artifacts:
            object.__setattr__(self, "registry_artifacts", str(registry / "artifacts"))

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, *,
                 secrets: bool | None = None) -> Settings:
        """Build the settings from ``DRIFTLINE_*`` variables over the defaults.

        With ``secrets`` (the default when reading the process's own environment, not a
        given mapping), a secret left empty there is read from the files that
        ``driftline stack up`` writes in ``<data dir>/secrets/``: the Redis password and the
        model signing key.
        A given mapping is the whole configuration, so that it means the same on every
        machine.

        >>> Settings.from_env({"DRIFTLINE_PARTITIONS": "2"}).partitions
        2
        """
        env = os.environ if environ is None else environ
        if secrets is None:
            secrets = environ is None
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(ENV_NAMES.get(f.name, "DRIFTLINE_" + f.name.upper()))
            if raw is None:
                continue
            default = getattr(cls, f.name, None)
            if isinstance(default, Path):
                values[f.name] = Path(raw).expanduser()
            elif isinstance(default, bool):
                values[f.name] = raw.lower() in {"1", "true", "yes"}
            elif isinstance(default, int):
                values[f.name] = int(raw)
            elif isinstance(default, float):
                values[f.name] = float(raw)
            else:
                values[f.name] = raw
        if secrets:
            # Read here, once, so that to_env() hands them to child processes, whose own
            # data dir (a worker's state) may hold no secrets.
            data_dir = Path(values.get("data_dir", cls.data_dir))
            for name, file in (("redis_password", REDIS_PASSWORD_FILE),
                               ("model_key", MODEL_KEY_FILE)):
                if not values.get(name) and (secret := read_secret(data_dir, file)):
                    values[name] = secret
        return cls(**values)

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some settings changed; derived addresses are recomputed."""
        derived = {}
        if "kafka_port" in changes and "kafka_bootstrap" not in changes:
            derived["kafka_bootstrap"] = ""
        if ({"redis_port", "redis_username", "redis_password"} & changes.keys()
                and "redis_url" not in changes):
            derived["redis_url"] = ""
        if "milvus_port" in changes and "milvus_uri" not in changes:
            derived["milvus_uri"] = ""
        if ({"worker_host", "worker_port"} & changes.keys()
                and "worker_metrics_url" not in changes):
            derived["worker_metrics_url"] = ""
        if "data_dir" in changes:
            derived.update({k: "" for k in ("registry_uri", "registry_artifacts")
                            if k not in changes})
        return replace(self, **{**derived, **changes})

    def to_env(self) -> dict[str, str]:
        """The variables that reproduce these settings in a child process."""
        out = {}
        for f in fields(self):
            out[ENV_NAMES.get(f.name, "DRIFTLINE_" + f.name.upper())] = str(getattr(self, f.name))
        return out

    # Names derived from the namespace, so that nothing else builds them by hand.
    def prefixed(self, name: str) -> str:
        """``name`` inside this deployment's namespace (topics, groups, keys)."""
        return f"{self.namespace}.{name}" if self.namespace else name

    @property
    def app_id(self) -> str:
        """The Faust application id: its consumer group and changelog topic prefix."""
        return self.prefixed("driftline-worker")

    @property
    def redis_prefix(self) -> str:
        return f"driftline:{self.namespace}:" if self.namespace else "driftline:"


# The secrets `driftline stack up` writes: a directory of the data dir (mode 0700), one
# file a secret (mode 0600).
SECRETS_DIR = "secrets"
REDIS_PASSWORD_FILE = "redis.password"
MODEL_KEY_FILE = "model.key"


def secret_path(data_dir: Path, name: str) -> Path:
    return Path(data_dir) / SECRETS_DIR / name


def read_secret(data_dir: Path, name: str) -> str:
    """The secret ``name`` of the data dir, surrounding whitespace removed; empty when
    its file is missing or unreadable."""
    try:
        return secret_path(data_dir, name).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


ENV_NAMES = {
    "kafka_controller_port": "DRIFTLINE_CONTROLLER_PORT",
    "worker_port": "DRIFTLINE_WORKER_PORT",
    "model_refresh_seconds": "DRIFTLINE_MODEL_REFRESH_SECONDS",
}
