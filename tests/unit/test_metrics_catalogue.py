"""The metrics catalogue in ARCHITECTURE.md lists every metric Driftline exports."""

from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from monitoring import metrics

DOC = Path(__file__).resolve().parents[2] / "ARCHITECTURE.md"


def exported() -> set[str]:
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            name = value._name
            names.add(f"{name}_total" if value._type == "counter" else name)
    return names | {"driftline_api_cache_hit_ratio"}  # computed at each scrape


def test_every_exported_metric_is_in_the_catalogue():
    table = DOC.read_text().split("## Metrics", 1)[1]
    missing = sorted(n for n in exported() if f"| `{n}` |" not in table)
    assert not missing, f"add these to the table in ARCHITECTURE.md: {missing}"
    assert len(exported()) > 40
