"""Signed model blobs: every built-in pipeline's model, learner checkpoint and embedder
round-trips; an unsigned, altered, foreign-key or malicious blob is refused; a scorer keeps
the model it has when the published one is refused."""

import asyncio
import os
import pickle
import random
import stat

import pytest
from prometheus_client import REGISTRY

from driftline.adapters.config import Settings
from driftline.adapters.signing import (
    MAGIC,
    NoModelKey,
    ensure_model_key,
    key_path,
    load_signed,
    model_key,
    sign,
    sign_bytes,
)
from driftline.adapters.stores import LiveModel, RedisKeys, SnapshotStore
from driftline.errors import BlobRefused, Unavailable
from online_models.learner import OnlineLearner
from online_models.spec import build_model
from streams.pipelines import PIPELINES
from streams.schemas import TrainingExample

KEY = bytes(range(32))


def learned(name, n=300):
    """The learner of pipeline ``name`` (its model, fallback and drift monitors) after
    ``n`` examples."""
    spec = PIPELINES[name]
    learner = OnlineLearner(spec, build_model(spec.model))
    learner.add_fallback(spec)
    rng = random.Random(name)
    for i in range(n):
        features = {f: rng.random() * 10 for f in spec.feature_names}
        first = features[spec.feature_names[0]]
        label = first > 5 if spec.task == "binary" else 3 * first + rng.random()
        learner.learn(TrainingExample(
            event_id=f"{name}-{i}", entity=f"e{i % 5}", event_time=float(i), features=features,
            score=0.5, model_version=learner.version, label=label, label_time=i + 1.0))
    return learner


@pytest.fixture(scope="module")
def learners():
    return {name: learned(name) for name in PIPELINES}


def scores_alike(a, b, spec):
    row = {f: 1.5 for f in spec.feature_names}
    if spec.task == "binary":
        return a.predict_proba_one(row) == b.predict_proba_one(row)
    return a.predict_one(row) == b.predict_one(row)


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_every_built_in_model_and_its_checkpoint_round_trips(name, learners):
    spec, learner = PIPELINES[name], learners[name]
    model = load_signed(sign(learner.model, KEY), KEY)
    assert type(model) is type(learner.model) and scores_alike(model, learner.model, spec)
    fallback = load_signed(sign(learner.fallback, KEY), KEY)
    assert type(fallback) is type(learner.fallback)
    restored = load_signed(sign(learner, KEY), KEY)
    assert isinstance(restored, OnlineLearner)
    assert (restored.updates, restored.version) == (learner.updates, learner.version)
    assert scores_alike(restored.model, learner.model, spec)


def test_the_embedder_and_the_embedding_checkpoint_round_trip():
    from agents.embedding import EmbeddingCheckpoint
    from streams.embeddings import EventEmbedder

    spec = next(PIPELINES[n] for n in sorted(PIPELINES) if PIPELINES[n].embeddings)
    embedder = EventEmbedder(spec)
    rng = random.Random(2)
    while not embedder.fit_one({f: rng.random() for f in spec.feature_names}):
        pass
    example = TrainingExample(event_id="x", entity="e", event_time=1.0,
                              features={f: 1.0 for f in spec.feature_names}, score=0.5,
                              model_version="v1.0", label=True, label_time=2.0)
    checkpoint = EmbeddingCheckpoint(embedder, next_offset=7, warmup=[(6, example)])
    back = load_signed(sign(checkpoint, KEY), KEY)
    assert back.next_offset == 7 and back.warmup[0][1] == example
    row = {f: 0.5 for f in spec.feature_names}
    assert list(load_signed(sign(embedder, KEY), KEY).vector(row)) == list(embedder.vector(row))


def refusal(blob, key=KEY):
    with pytest.raises(BlobRefused) as caught:
        load_signed(blob, key)
    return caught.value.reason


def test_an_unsigned_pickle_is_refused(learners):
    assert refusal(pickle.dumps(learners["fraud"].model)) == "unsigned"
    assert refusal(b"") == "unsigned"
    assert refusal(MAGIC + b"short") == "unsigned"


def test_an_altered_byte_or_another_key_is_refused(learners):
    blob = bytearray(sign(learners["fraud"].model, KEY))
    for at in (len(MAGIC), len(MAGIC) + 40, len(blob) - 1):
        altered = bytearray(blob)
        altered[at] ^= 0x01
        assert refusal(bytes(altered)) == "bad_signature"
    assert refusal(bytes(blob), key=os.urandom(32)) == "bad_signature"


class Planted:
    """Would run a shell command when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_validly_signed_malicious_pickle_is_refused_by_the_unpickler(tmp_path):
    marker = tmp_path / "ran"
    assert refusal(sign(Planted(marker), KEY)) == "forbidden"
    assert not marker.exists()


@pytest.mark.parametrize("module, name", [
    ("builtins", "eval"), ("builtins", "exec"), ("builtins", "__import__"), ("os", "system"),
    ("subprocess", "Popen"), ("posix", "system"), ("importlib", "import_module"),
    ("types", "FunctionType"), ("types", "CodeType"), ("sys", "modules"),
    ("streams.pipelines", "load"), ("streams.pipelines", "_from_file"),
    ("online_models.learner", "pickle"),  # a module, whatever imports it
    ("online_models.registry", "Registry"), ("driftline.tools.stack", "LocalStack"),
    ("river.datasets", "Phishing"), ("numpy", "load"), ("numpy", "save"),
    ("online_models.learner", "OnlineLearner.__init__.__globals__"),
])
def test_globals_a_model_does_not_need_are_refused(module, name):
    payload = (pickle.PROTO + bytes([4]) + pickle.SHORT_BINUNICODE + bytes([len(module)])
               + module.encode() + pickle.SHORT_BINUNICODE + bytes([len(name)]) + name.encode()
               + pickle.STACK_GLOBAL + pickle.STOP)
    assert refusal(sign_bytes(payload, KEY)) in ("forbidden", "unreadable")


def test_getattr_reaches_no_dunder_attribute(learners):
    # getattr(<a learner>, "__class__"): the first step of every escape through attributes
    evil = (pickle.PROTO + bytes([4]) + pickle.SHORT_BINUNICODE + b"\x08builtins"
            + pickle.SHORT_BINUNICODE + b"\x07getattr" + pickle.STACK_GLOBAL
            + pickle.SHORT_BINUNICODE + b"\x08builtins" + pickle.SHORT_BINUNICODE + b"\x04list"
            + pickle.STACK_GLOBAL + pickle.SHORT_BINUNICODE + b"\x09__class__"
            + pickle.TUPLE2 + pickle.REDUCE + pickle.STOP)
    assert refusal(sign_bytes(evil, KEY)) == "forbidden"


# ---- the key ------------------------------------------------------------------------------

def test_stack_up_writes_one_private_key_and_keeps_it(tmp_path):
    settings = Settings().with_overrides(data_dir=tmp_path / "data")
    with pytest.raises(NoModelKey, match="driftline stack up") as caught:
        model_key(settings)
    assert isinstance(caught.value, Unavailable)
    path = ensure_model_key(settings)
    assert path == key_path(settings) == tmp_path / "data" / "secrets" / "model.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    key = model_key(settings)
    assert len(key) == 32
    ensure_model_key(settings)  # idempotent: never a new key over the old one
    assert model_key(settings) == key


def test_a_configured_key_wins_and_no_file_is_written(tmp_path):
    settings = Settings().with_overrides(data_dir=tmp_path, model_key="ab" * 32)
    assert model_key(settings) == bytes.fromhex("ab" * 32)
    ensure_model_key(settings)
    assert not key_path(settings).exists()
    with pytest.raises(NoModelKey, match="not hex"):
        model_key(settings.with_overrides(model_key="not-a-key"))


# ---- a scorer keeps its model --------------------------------------------------------------

class FakeRedis:
    """The hash commands a SnapshotStore uses, in memory."""

    def __init__(self):
        self.hashes: dict[str, dict[str, bytes]] = {}

    @staticmethod
    def _bytes(v):
        return v if isinstance(v, bytes) else str(v).encode()

    async def hset(self, key, field=None, value=None, mapping=None):
        h = self.hashes.setdefault(key, {})
        for k, v in ({field: value} if mapping is None else mapping).items():
            h[k] = self._bytes(v)

    async def hsetnx(self, key, field, value):
        h = self.hashes.setdefault(key, {})
        if field in h:
            return False
        h[field] = self._bytes(value)
        return True

    async def hget(self, key, field):
        return self.hashes.get(key, {}).get(field)

    async def hmget(self, key, fields):
        h = self.hashes.get(key, {})
        return [h.get(f) for f in fields]


def refused_count(store, reason):
    return REGISTRY.get_sample_value("driftline_blobs_refused_total",
                                     {"store": store, "reason": reason}) or 0.0


def test_a_planted_snapshot_is_refused_once_and_the_model_in_memory_stays(tmp_path, caplog,
                                                                         learners):
    async def run():
        redis = FakeRedis()
        keys = RedisKeys("driftline:unit:", "fraud")
        store = SnapshotStore(redis, keys, signing_key=KEY)
        live = LiveModel(store)
        await store.publish(learners["fraud"].model, "v0.300",
                            fallback=learners["fraud"].fallback, fallback_examples=300)
        assert await live.refresh()
        served = live.current
        before = refused_count("snapshot", "forbidden"), refused_count("snapshot", "unsigned")
        marker = tmp_path / "ran"
        await redis.hset(keys.model, mapping={"blob": pickle.dumps(Planted(marker)),
                                              "version": "v9.0", "id": "planted"})
        for _ in range(3):  # refused once, then not loaded again
            assert not await live.refresh()
        assert live.current is served and not marker.exists()
        assert refused_count("snapshot", "unsigned") == before[1] + 1
        # Signed with our key but naming os.system: refused by the unpickler.
        await redis.hset(keys.model, mapping={"blob": sign(Planted(marker), KEY),
                                              "version": "v9.1", "id": "planted2"})
        assert not await live.refresh()
        assert live.current is served and not marker.exists()
        assert refused_count("snapshot", "forbidden") == before[0] + 1
        # A valid publication is served again.
        await store.publish(learners["fraud"].model, "v0.301")
        assert await live.refresh() and live.current.version == "v0.301"

    with caplog.at_level("WARNING", logger="driftline.adapters.stores"):
        asyncio.run(run())
    refusals = [r for r in caplog.records if "refused the snapshot" in r.getMessage()]
    assert len(refusals) == 2 and "v9.0" in refusals[0].getMessage()


def test_a_refused_learner_checkpoint_raises_what_the_learner_catches(learners):
    async def run():
        redis = FakeRedis()
        keys = RedisKeys("driftline:unit:", "fraud")
        store = SnapshotStore(redis, keys, signing_key=KEY)
        await store.save_checkpoint(learners["fraud"], "v0.300")
        assert (await store.load_checkpoint()).updates == learners["fraud"].updates
        await redis.hset(keys.checkpoint, "state", pickle.dumps(learners["fraud"]))
        with pytest.raises(pickle.UnpicklingError):  # BlobRefused is one
            await store.load_checkpoint()
        other = SnapshotStore(redis, keys, signing_key=os.urandom(32))
        await store.save_checkpoint(learners["fraud"], "v0.300")
        with pytest.raises(BlobRefused):
            await other.load_checkpoint()

    asyncio.run(run())
