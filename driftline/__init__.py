"""Driftline: real-time machine learning on Kafka event streams."""

__version__ = "0.1.0"
