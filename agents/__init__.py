"""The Faust stream worker: its app and the agents of each pipeline."""

import driftline  # checks that the top-level packages are Driftline's own  # noqa: F401
