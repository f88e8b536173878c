"""Pipelines from the user's own modules (streams.pipelines.load): found by import name or
file path beside the entry points, and stopped with the module and the reason when wrong."""

from __future__ import annotations

import pytest

from streams.engine import FeatureEngine
from streams.pipelines import PipelineLoadError, load

DECLARATION = '''
from pydantic import Field
from river import linear_model

from streams.declarations import Agg, PipelineSpec, Raw, Sliding
from streams.schemas import Record


class Ride(Record):
    ride_id: str = Field(alias="ride-id")
    zone: str
    fare_eur: float = Field(alias="fare-eur", gt=0)
    seats: float = Field(alias="1")
    at: float


class Fare(Record):
    ride_id: str = Field(alias="ride-id")
    paid: float
    at: float


def fare_model():
    return linear_model.LinearRegression()


RIDES = PipelineSpec(
    name="{name}", event_type=Ride, entity_field="zone", time_field="at",
    event_id_field="ride-id", label_type=Fare, label_field="paid", label_time_field="at",
    task="regression", model=fare_model, metrics=("mae",),
    features=(Raw("fare-eur"), Raw("1"), Agg("fares-1h", "sum", Sliding(3600.0),
                                           field="{field}")),
)
'''


def write(tmp_path, name="rides", field="fare-eur", filename="rides.py"):
    path = tmp_path / filename
    path.write_text(DECLARATION.replace("{name}", name).replace("{field}", field))
    return path


def test_a_file_declares_pipelines_beside_the_examples(tmp_path):
    pipelines = load(str(write(tmp_path)))
    assert {"fraud", "pricing", "rides"} <= set(pipelines)
    rides = pipelines["rides"]
    assert rides.model.__name__ == "fare_model" and rides.describe()["model"].endswith(
        ":fare_model")
    # JSON names that are not identifiers, read and written as the producer sends them.
    from streams.schemas import parse

    ride = parse(rides.event_type, b'{"ride-id": "r1", "zone": "z", "fare-eur": 12.5, '
                                   b'"1": 2, "at": 100.0}')
    assert (rides.event_id_of(ride), rides.entity_of(ride), rides.time_of(ride)) == (
        "r1", "z", 100.0)
    assert b'"fare-eur":12.5' in ride.to_json()
    engine = FeatureEngine(rides)
    assert engine.features_for(None, ride) == {"fare-eur": 12.5, "1": 2.0, "fares-1h": 12.5}


def test_an_invalid_declaration_names_the_module_and_the_field(tmp_path):
    path = write(tmp_path, field="fare")
    with pytest.raises(PipelineLoadError, match=rf"{path}.*feature fares-1h reads unknown "
                                                r"field 'fare'"):
        load(str(path))


def test_two_pipelines_with_one_name_stop_the_start(tmp_path):
    first = write(tmp_path, filename="a.py")
    second = write(tmp_path, filename="b.py")
    with pytest.raises(PipelineLoadError, match=r"'rides' is declared twice: by .*a\.py and "
                                                r"by .*b\.py"):
        load(f"{first},{second}")
    with pytest.raises(PipelineLoadError, match="'fraud' is declared twice"):
        load(str(write(tmp_path, name="fraud", filename="c.py")))


def test_a_module_that_cannot_load_or_declares_nothing_is_named(tmp_path):
    with pytest.raises(PipelineLoadError, match="no_such_module_xyz: ModuleNotFoundError"):
        load("no_such_module_xyz")
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(PipelineLoadError, match=r"empty\.py: the module declares no "
                                                "PipelineSpec"):
        load(str(empty))
    with pytest.raises(PipelineLoadError, match="no such file"):
        load(str(tmp_path / "missing.py"))


def test_an_imported_example_is_not_a_second_declaration(tmp_path):
    reuse = tmp_path / "reuse.py"
    reuse.write_text("from streams.catalog.pricing import PRICING\n")
    assert load(str(reuse))["pricing"].name == "pricing"
    clash = write(tmp_path, name="pricing", filename="clash.py")
    clash.write_text("from streams.catalog.pricing import PRICING\n" + clash.read_text())
    with pytest.raises(PipelineLoadError, match=r"'pricing' is declared twice: by entry point "
                                                r"pricing = streams\.catalog\.pricing and by "
                                                r".*clash\.py"):
        load(str(clash))
