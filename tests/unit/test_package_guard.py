"""The top-level names guard: another distribution's ``agents`` (say) stops the import with
the name, the path and the fix, instead of a confusing error later."""

from __future__ import annotations

import os
import subprocess
import sys

import driftline


def test_driftline_own_packages_pass():
    driftline.check_packages()  # raises when one is not


def test_a_shadowing_package_stops_the_import_with_the_fix(tmp_path):
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "__init__.py").write_text('"""Another project\'s agents."""\n')
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", "import streams.engine"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "the top-level package 'agents' is not Driftline's own" in run.stderr
    assert str(tmp_path / "agents" / "__init__.py") in run.stderr
    assert "virtual environment of its own" in run.stderr
