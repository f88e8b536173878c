"""The pipelines Driftline ships: one declaration per module."""
