"""``driftline init``: the project it writes passes its own test, and Driftline loads and
validates its declaration (through ``DRIFTLINE_PIPELINES``, as the README's walkthrough
does). Each step runs as a user would run it: a command in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import pytest

from driftline.cli import main

pytestmark = pytest.mark.integration


def driftline(*args: str, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "driftline", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def clean_env() -> dict[str, str]:
    """This environment without a user's pipelines or namespace."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DRIFTLINE_PIPELINES", "DRIFTLINE_NAMESPACE", "PYTHONPATH")}
    return env


def test_init_writes_a_project_whose_test_passes_and_that_validates(tmp_path, clean_env):
    root = tmp_path / "payments-feed"
    topic = f"t{uuid.uuid4().hex[:8]}.payments"  # a topic of the user's: never created here
    made = driftline("init", str(root), "--name", "payments", "--topic", topic, env=clean_env)
    assert made.returncode == 0, made.stderr
    module = root / "payments_feed" / "pipeline.py"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "README.md", "payments_feed/__init__.py", "payments_feed/pipeline.py", "produce.py",
        "pyproject.toml", "tests/test_pipeline.py"]
    assert f"DRIFTLINE_PIPELINES={module}" in made.stdout

    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["project"]["dependencies"] == ["driftline"]
    assert project["project"]["entry-points"]["driftline.pipelines"] == {
        "payments": "payments_feed.pipeline"}
    source = module.read_text()
    assert f'events_topic="{topic}"' in source and 'alias="amount-eur"' in source

    # The generated test: the features of a few events, through the worker's engine.
    tested = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                            cwd=root, env=clean_env, capture_output=True, text=True,
                            timeout=300)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "5 passed" in tested.stdout

    # The sample producer imports (its topics come from the declaration).
    helped = subprocess.run([sys.executable, "produce.py", "--help"], cwd=root, env=clean_env,
                            capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0, helped.stderr

    # Driftline loads it beside its own pipelines, from any directory.
    env = {**clean_env, "DRIFTLINE_PIPELINES": str(module), "DRIFTLINE_NAMESPACE": "t1"}
    valid = driftline("validate", env=env, cwd=tmp_path)
    assert valid.returncode == 0, valid.stderr
    assert "payments (binary)" in valid.stdout and "fraud (binary)" in valid.stdout
    assert f"    events       {topic} (declared)\n" in valid.stdout
    assert "    labels       t1.payments.labels\n" in valid.stdout
    assert "  model        driftline_pipelines_pipeline_" in valid.stdout  # loaded by path
    schema = driftline("schema", "payments", env=env, cwd=tmp_path)
    assert schema.returncode == 0, schema.stderr
    assert '"amount-eur"' in schema.stdout

    # A broken edit is named, with the field.
    module.write_text(source.replace('Raw("amount", field="amount-eur")',
                                     'Raw("amount", field="amount_eur")'))
    broken = driftline("validate", env=env, cwd=tmp_path)
    assert broken.returncode == 1
    assert broken.stderr.strip() == (f"driftline: {module}: ValueError: payments: feature "
                                     "amount reads unknown field 'amount_eur'")


def test_init_refuses_a_directory_that_is_not_empty_and_bad_names(tmp_path, capsys):
    def init(*args: str) -> tuple[int, str]:  # in-process: refusals write nothing
        with pytest.raises(SystemExit) as done:
            main(["init", *args])
        return done.value.code, capsys.readouterr().err

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    code, err = init(str(tmp_path / "taken"))
    assert code == 1 and f"driftline: {tmp_path / 'taken'} is not empty" in err
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]

    for args, why in ((["--name", "Bad-Name"], "pipeline name 'Bad-Name'"),
                      (["--name", "fraud"], "a pipeline named 'fraud' is declared already"),
                      (["--topic", "no spaces"], "--topic 'no spaces' is not a Kafka topic")):
        code, err = init(str(tmp_path / "new"), *args)
        assert code == 1 and why in err, err
        assert not (tmp_path / "new").exists()

    # Defaults from the directory's name: the pipeline, the package, the topics.
    code, err = init(str(tmp_path / "card-events"))
    assert code == 0, err
    source = (tmp_path / "card-events" / "card_events" / "pipeline.py").read_text()
    assert 'name="card_events"' in source and "\n    events_topic=" not in source
