"""The model registry against a real MLflow on a SQLite file in tmp_path."""

import json
import multiprocessing
import shutil
import time

import pytest

from online_models.registry import Lineage, Registry


def lineage(reason="drift", parent=None, start=0, end=99, **changes):
    fields = dict(reason=reason, evidence={"detector": "adwin", "metric": "roc_auc", "at": 812},
                  spec="fraud_logistic",
                  declaration={"name": "fraud", "task": "binary", "features": ["amount"]},
                  topic="t1.fraud.training", start_offset=start, end_offset=end,
                  start_time=None if start is None else 1000.0 + start,
                  end_time=None if end is None else 1000.0 + end,
                  examples=0 if start is None else end - start + 1, parent=parent)
    return Lineage(**{**fields, **changes})


def trained_model(n=30):
    # River is imported here, not at the top: the writer processes spawned below skip it.
    from online_models.spec import build_model

    model = build_model("streams.catalog.fraud:fraud_logistic")
    for i in range(n):
        model.learn_one({"amount": float(i % 7), "hour": float(i % 24)}, i % 3 == 0)
    return model


def make(tmp_path, namespace="t1"):
    return Registry(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts", namespace)


@pytest.fixture(scope="module")
def migrated_db(tmp_path_factory):
    # Creating a database runs MLflow's migrations (~1.5 s): once here, copied by each test.
    path = tmp_path_factory.mktemp("template")
    make(path)
    return path / "mlflow.db"


@pytest.fixture
def registry(tmp_path, monkeypatch, migrated_db):
    shutil.copy(migrated_db, tmp_path / "mlflow.db")
    # A working directory of its own, to catch artifacts that land in ./mlruns.
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return make(tmp_path)


def test_register_promote_and_list_newest_first(registry, tmp_path):
    before = time.time()
    first = registry.register("fraud", trained_model(), lineage("bootstrap", start=None, end=None),
                              {"roc_auc": 0.71})
    second = registry.register("fraud", trained_model(50), lineage(parent=first.version),
                               {"roc_auc": 0.83, "champion_roc_auc": 0.71})
    assert (first.version, second.version) == (1, 2)
    assert not second.champion and registry.champion("fraud") is None

    registry.promote("fraud", 1)
    promoted = registry.promote("fraud", 2)
    assert promoted.champion and registry.champion("fraud").version == 2

    listed = registry.versions("fraud")
    assert [(v.version, v.champion) for v in listed] == [(2, True), (1, False)]
    assert listed[0].lineage == lineage(parent=1)
    assert listed[0].metrics == {"roc_auc": 0.83, "champion_roc_auc": 0.71}
    assert listed[1].lineage.reason == "bootstrap" and listed[1].lineage.start_offset is None
    assert before - 1 <= listed[1].created_at <= listed[0].created_at <= time.time() + 1
    as_json = json.loads(json.dumps(listed[0].to_dict()))
    assert as_json["lineage"]["evidence"]["detector"] == "adwin"
    assert (as_json["version"], as_json["champion"], as_json["pipeline"]) == (2, True, "fraud")

    # The artifacts went under the artifact root, and the run holds params and metrics.
    assert len(list((tmp_path / "artifacts").rglob("model.pkl"))) == 2
    assert len(list((tmp_path / "artifacts").rglob("declaration.json"))) == 2
    assert not (tmp_path / "cwd" / "mlruns").exists()
    experiment = registry.client.get_experiment_by_name(registry.model_name("fraud"))
    runs = registry.client.search_runs([experiment.experiment_id], order_by=["start_time ASC"])
    assert runs[1].data.params["reason"] == "drift" and runs[1].data.params["parent"] == "1"
    assert runs[1].data.metrics["roc_auc"] == 0.83 and runs[1].info.status == "FINISHED"


def test_load_returns_a_model_that_predicts_like_the_original(registry):
    model = trained_model()
    mv = registry.register("fraud", model, lineage(), {"roc_auc": 0.8})
    loaded = registry.load("fraud", mv.version)
    assert loaded is not model
    for x in ({"amount": 0.0, "hour": 3.0}, {"amount": 6.0, "hour": 20.0}, {"amount": 2.5}):
        assert loaded.predict_proba_one(x) == model.predict_proba_one(x)
    assert model.predict_proba_one({"amount": 6.0})[True] != 0.5  # it did learn something


def test_rollback_walks_back_through_the_champions(registry):
    # The previous champion wins over the lineage parent: v3 replaced v2, though compared
    # with v1.
    for parent in (None, None, 1):
        registry.register("fraud", trained_model(), lineage(parent=parent), {})
    for version in (1, 2, 3, 3):  # promoting the champion again changes nothing
        registry.promote("fraud", version)
    assert registry.rollback("fraud").version == 2
    assert registry.champion("fraud").version == 2
    assert registry.rollback("fraud").version == 1
    with pytest.raises(ValueError, match="no previous champion"):
        registry.rollback("fraud")
    assert [v.version for v in registry.versions("fraud") if v.champion] == [1]


def test_rollback_falls_back_to_the_lineage_parent(registry):
    registry.register("fraud", trained_model(), lineage(), {})
    registry.register("fraud", trained_model(), lineage(parent=1), {})
    registry.promote("fraud", 2)  # never a champion before it: only the parent is known
    assert registry.rollback("fraud").version == 1


def test_rollback_without_a_champion_is_a_clear_error(registry):
    with pytest.raises(ValueError, match="fraud: no champion"):
        registry.rollback("fraud")
    registry.register("fraud", trained_model(), lineage(), {})
    with pytest.raises(ValueError, match="no champion"):
        registry.rollback("fraud")


def test_unknown_versions_and_pipelines(registry):
    assert registry.versions("fraud") == [] and registry.champion("fraud") is None
    registry.register("fraud", trained_model(), lineage(), {})
    for call in (registry.get, registry.load, registry.promote):
        with pytest.raises(KeyError, match="fraud: no registry version 7"):
            call("fraud", 7)
    with pytest.raises(KeyError, match="pricing: no registry version 1"):
        registry.get("pricing", 1)


def test_namespaces_sharing_one_database_do_not_see_each_other(registry, tmp_path):
    other = make(tmp_path, namespace="demo-ab12")
    plain = make(tmp_path, namespace="")
    assert len({r.model_name("fraud") for r in (registry, other, plain)}) == 3
    registry.register("fraud", trained_model(), lineage(), {})
    registry.promote("fraud", 1)
    assert other.versions("fraud") == [] and other.champion("fraud") is None
    mv = other.register("fraud", trained_model(), lineage(reason="manual"), {})
    assert mv.version == 1 and other.get("fraud", 1).lineage.reason == "manual"
    assert [v.lineage.reason for v in registry.versions("fraud")] == ["drift"]
    assert plain.versions("fraud") == []


def _writer(db_dir, start, count, errors):
    try:
        start.wait(60)
        registry = make(db_dir)
        for _ in range(count):
            mv = registry.register("fraud", {"weights": [0.5]}, lineage(), {"roc_auc": 0.5})
            registry.promote("fraud", mv.version)
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        errors.put(f"{exc!r}")


def test_processes_share_one_fresh_database(tmp_path):
    """Two writer processes and this one open a database that does not exist yet at the same
    moment (MLflow alone fails to create it twice at once); then this one reads all the time
    the other two register and promote."""
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding DB connections
    start, errors = ctx.Barrier(3), ctx.Queue()
    writers = [ctx.Process(target=_writer, args=(tmp_path, start, 4, errors)) for _ in range(2)]
    for p in writers:
        p.start()
    start.wait(60)
    registry, reads, deadline = make(tmp_path), 0, time.monotonic() + 120
    while any(p.is_alive() for p in writers) and time.monotonic() < deadline:
        for mv in registry.versions("fraud"):
            assert registry.get("fraud", mv.version).version == mv.version
        champion = registry.champion("fraud")
        if champion is not None:
            registry.load("fraud", champion.version)
        reads += 1
    for p in writers:  # one still running after the deadline has hung
        if p.is_alive():
            p.kill()
        p.join()
    problems = [errors.get() for _ in range(errors.qsize())]
    assert problems == [] and [p.exitcode for p in writers] == [0, 0] and reads > 1
    assert [v.version for v in registry.versions("fraud")] == list(range(8, 0, -1))
    assert registry.champion("fraud") is not None
