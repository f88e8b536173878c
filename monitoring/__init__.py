"""Prometheus metrics (and, later, drift detectors, dashboards and alert rules)."""
