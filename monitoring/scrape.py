"""Read a /metrics page back into numbers (for the demo's progress lines and tests)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


class Scrape(dict):
    """Samples by name, each a list of (labels, value)."""

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``."""
        return sum(v for lab, v in self.get(name, []) if labels.items() <= lab.items())


def scrape(url: str, timeout: float = 3.0) -> Scrape:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return parse(resp.read().decode())


def parse(text: str) -> Scrape:
    r"""A Prometheus text exposition as samples by name, parsed by prometheus_client.

    >>> s = parse('# TYPE x_total counter\nx_total{p="a"} 2.0\nx_total{p="b"} 3.0\n')
    >>> s.value("x_total"), s.value("x_total", p="b")
    (5.0, 3.0)
    """
    out = Scrape()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out
