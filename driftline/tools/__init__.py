"""Developer and operator tooling: the local stack, processes, namespaces, seeding, the demo,
replays, dead-letter handling and the synthetic producer.

The top layer beside ``driftline.cli``: tools may use ``online_models`` and the adapters, but
start services only as processes (``driftline worker``, ``driftline serve``), never by import.
"""
