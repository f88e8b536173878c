from pathlib import Path

from driftline.adapters.config import Settings
from streams.topics import PipelineTopics


def test_defaults_point_at_the_local_stack():
    s = Settings.from_env({})
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.app_id == "driftline-worker"


def test_environment_overrides_and_round_trip():
    s = Settings.from_env({"DRIFTLINE_KAFKA_PORT": "19092", "DRIFTLINE_NAMESPACE": "t1",
                           "DRIFTLINE_DATA_DIR": "/tmp/x", "DRIFTLINE_SNAPSHOT_SECONDS": "0.5"})
    assert s.kafka_bootstrap == "127.0.0.1:19092"
    assert s.data_dir == Path("/tmp/x")
    assert s.snapshot_seconds == 0.5
    assert s.app_id == "t1.driftline-worker"
    assert Settings.from_env(s.to_env()) == s


def test_with_overrides_recomputes_derived_addresses():
    s = Settings.from_env({}).with_overrides(redis_port=7000)
    assert s.redis_url == "redis://127.0.0.1:7000/0"


def test_topic_partitions_give_the_learner_one_partition():
    topics = PipelineTopics.for_pipeline("fraud", "ns")
    parts = topics.partitions(4)
    assert parts[topics.training] == 1
    assert parts[topics.events] == parts[topics.join] == 4


def test_the_default_data_directory_is_the_checkout_s_own():
    from pathlib import Path

    import driftline.tools.stack as stack
    from driftline.adapters.config import Settings

    root = Path(__file__).resolve().parents[2]
    assert Settings().data_dir == root / ".driftline"
    assert stack.POM == root / "scripts" / "kafka" / "pom.xml" and stack.POM.is_file()
