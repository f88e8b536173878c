"""How :class:`~agents.pipeline.PipelineAgents` wires each declared pipeline: built on a
Faust app that never starts, so nothing here needs Kafka or Redis."""

from __future__ import annotations

import faust
import pytest

from agents.pipeline import PipelineAgents
from driftline.adapters.config import Settings
from driftline.adapters.kafka_admin import (
    PipelinePartitions,
    TopicLayoutError,
    refuse_other_partitioning,
)
from streams.pipelines import PIPELINES
from tests.unit.test_join import _Outputs, _snapshots, _Table


def _agents(name: str, tmp_path) -> PipelineAgents:
    settings = Settings(data_dir=tmp_path, namespace="unit")
    app = faust.App(settings.app_id, broker="kafka://127.0.0.1:1", store="memory://",
                    datadir=str(tmp_path))
    return PipelineAgents(app, settings, PIPELINES[name], _Outputs(),
                          PipelinePartitions(events=2, labels=3))


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_the_join_waits_as_long_as_its_pipeline_declares(name, tmp_path):
    assert _agents(name, tmp_path).join.delay_bound == PIPELINES[name].label_delay_bound


@pytest.mark.parametrize("name", sorted(PIPELINES))
async def test_a_pending_entry_expires_after_its_pipelines_bound_and_not_before(name, tmp_path):
    join = _agents(name, tmp_path).join
    join.pending, join.outputs = _Table(), _Outputs()
    start, bound = 1_000.0, PIPELINES[name].label_delay_bound

    async def every_source_at(t: float, offset: int) -> None:
        await join.handle([_snapshots(s, (f"at-{t}-{s}", t), offset=offset)
                           for s in range(join.sources)])

    await join.handle([_snapshots(0, ("waiting", start))])
    await every_source_at(start + bound, offset=1)
    assert "waiting" in join.pending.data
    await every_source_at(start + bound + 1.0, offset=2)
    assert "waiting" not in join.pending.data


def test_snapshots_go_where_labels_land_and_the_join_hears_every_events_partition(tmp_path):
    agents = _agents("fraud", tmp_path)  # 2 events partitions, 3 labels partitions
    assert agents.scorer.join_partitions == 3
    assert agents.join.sources == 2


def test_a_worker_topic_partitioned_otherwise_than_its_input_is_refused(tmp_path):
    agents = _agents("fraud", tmp_path)
    join = agents.topics.join
    refuse_other_partitioning(agents.settings, {join: 3}, agents.co_partitioned)
    with pytest.raises(TopicLayoutError, match=f"{join} has 4 partitions; it needs 3, as "
                                               f"{agents.topics.labels} has"):
        refuse_other_partitioning(agents.settings, {join: 4}, agents.co_partitioned)
