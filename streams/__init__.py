"""Event schemas, topic names and feature definitions: pure code, no I/O.

Everything here runs the same in the stream worker, the scoring API, offline replays and
unit tests, which is what keeps training and serving from drifting apart.
"""

import driftline  # checks that the top-level packages are Driftline's own  # noqa: F401
