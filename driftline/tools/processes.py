"""Child processes of the demo and the integration tests: the worker and the API.

Each runs ``python -m driftline ...`` with the settings passed as environment
variables, logs to a file, and counts as started when its HTTP port answers.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from driftline.adapters.config import Settings


@dataclass
class ServiceProcess:
    name: str
    args: list[str]
    settings: Settings
    ready_url: str
    log_path: Path
    # Another checkout of Driftline to run instead of this one (a benchmark's baseline).
    source: Path | None = None
    proc: subprocess.Popen | None = field(default=None, init=False)

    def start(self, timeout: float = 120.0) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # A crash inside a C extension still leaves a Python traceback in the log.
        env = {**os.environ, "PYTHONFAULTHANDLER": "1", **self.settings.to_env()}
        if self.source is not None:
            env["PYTHONPATH"] = str(self.source)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "driftline", *self.args],
                                         cwd=self.source,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; "
                                   f"see {self.log_path}")
            if http_ok(self.ready_url):
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s; see {self.log_path}")

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def kill(self) -> None:
        """Stop at once, as a crash would (SIGKILL)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _only(pipelines: list[str] | None) -> list[str]:
    return [arg for p in pipelines or [] for arg in ("--pipeline", p)]


def worker_process(settings: Settings, log_dir: Path, pipelines: list[str] | None = None,
                   source: Path | None = None) -> ServiceProcess:
    return ServiceProcess("worker", ["worker", *_only(pipelines)], settings,
                          f"http://127.0.0.1:{settings.worker_port}/healthz",
                          log_dir / "worker.log", source)


def retrainer_process(settings: Settings, log_dir: Path,
                      pipelines: list[str] | None = None) -> ServiceProcess:
    return ServiceProcess("retrainer", ["retrainer", *_only(pipelines)], settings,
                          f"http://{settings.worker_host}:{settings.retrainer_port}/metrics",
                          log_dir / "retrainer.log")


def api_process(settings: Settings, log_dir: Path, workers: int = 1) -> ServiceProcess:
    return ServiceProcess("api", ["serve", "--workers", str(workers)], settings,
                          f"{api_url(settings)}/healthz", log_dir / "api.log")


def api_url(settings: Settings) -> str:
    """The API's base URL: HTTPS when a certificate is configured."""
    scheme = "https" if settings.api_tls_cert else "http"
    return f"{scheme}://{settings.api_host}:{settings.api_port}"


def http_ok(url: str) -> bool:
    # Readiness only: a self-signed certificate is fine here; clients verify theirs.
    context = ssl._create_unverified_context() if url.startswith("https") else None
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:
            return resp.status == 200
    except OSError:
        return False
