"""The Faust stream worker: its app and the agents of each pipeline."""
