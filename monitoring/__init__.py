"""Prometheus metrics, drift detectors, structured logs, dashboards and alert rules."""

import driftline  # checks that the top-level packages are Driftline's own  # noqa: F401
