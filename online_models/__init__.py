"""Model specifications, online learning, snapshots and (later) retraining and the registry."""
