"""The platform adapters every service stands on: configuration, Redis, Milvus, Kafka.

The bottom layer above the pure core (``streams``, ``monitoring``): it may import those,
never a service (``agents``, ``serving``) or ``online_models``. The import contract in
``pyproject.toml`` checks it.
"""
