"""Unit tests sign and verify model blobs with a key of their own, not the local stack's
(a fresh checkout has none until `driftline stack up` writes it)."""

import pytest


@pytest.fixture(autouse=True)
def model_signing_key(monkeypatch):
    monkeypatch.setenv("DRIFTLINE_MODEL_KEY", "00" * 32)
