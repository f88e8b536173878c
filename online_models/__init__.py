"""Model specifications, online learning, retraining, the model registry and its lifecycle."""

import driftline  # checks that the top-level packages are Driftline's own  # noqa: F401
