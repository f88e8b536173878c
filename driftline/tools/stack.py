"""The local stack without Docker: a KRaft Kafka broker, a Redis server and a Milvus Lite
server on loopback.

Kafka's jars are resolved once from Maven Central with Maven (``scripts/kafka/pom.xml``)
into a cache directory outside the repository; the broker then runs from them with
``java``. Redis is Debian's ``redis-server``, installed with apt when it is missing.
Debian's ``kcat`` (a Kafka client for the shell) is installed beside them when missing.
Milvus Lite (a pip dependency) keeps its vectors in local files that only one process may
open, so it runs as its own gRPC server (``milvus-lite server``) that the worker and the
API both reach by URI, exactly as they would reach a Milvus server.

Each service started here leaves a pid file in the data directory; ``down`` stops only
the processes named by those files, so a broker or Redis that something else started is
never touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from driftline.adapters.config import Settings

POM = Path(__file__).resolve().parents[2] / "scripts" / "kafka" / "pom.xml"

# Logging binding that Kafka's binary distribution ships and its Maven artifact lacks.
LOG4J_PROPERTIES = """\
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.request.logger=WARN
"""


class StackError(RuntimeError):
    """A service of the local stack could not be brought up."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    pid: int | None
    address: str
    log: Path
    owned: bool  # started by this stack (a pid file of ours names a live process)

    def line(self) -> str:
        if self.running and self.owned:
            state = f"running (pid {self.pid})"
        elif self.running:
            state = "answering, not started by driftline"
        else:
            state = "stopped"
        return f"{self.name:<6} {state:<38} {self.address:<22} log: {self.log}"


SERVICES = ("kafka", "milvus", "redis")


class LocalStack:
    """Start, stop and report the local Kafka broker, Redis and Milvus Lite servers."""

    def __init__(self, settings: Settings, out=sys.stdout) -> None:
        self.settings = settings
        self.out = out
        self.data = settings.data_dir
        self.kafka_dir = self.data / "kafka"
        self.redis_dir = self.data / "redis"
        self.milvus_dir = self.data / "milvus"
        self.jar_dir = settings.cache_dir / f"kafka-{settings.kafka_version}" / "libs"

    # ---- public commands -------------------------------------------------------------

    def up(self, timeout: float = 90.0, services: tuple[str, ...] = SERVICES) -> None:
        """Bring the services up; a service already up is left as it is."""
        self.data.mkdir(parents=True, exist_ok=True)
        for name in ("redis", "milvus", "kafka"):
            if name in services:
                getattr(self, f"_up_{name}")(timeout)
        if "kafka" in services:
            self._ensure_kcat()

    def down(self, services: tuple[str, ...] = SERVICES) -> None:
        """Stop what ``up`` started, and nothing else."""
        for name in services:
            pid = self._owned_pid(name)
            if pid is None:
                self._say(f"{name}: not started by driftline, nothing to stop")
                continue
            self._say(f"{name}: stopping pid {pid}")
            _terminate(pid)
            self._pidfile(name).unlink(missing_ok=True)

    def pid(self, name: str) -> int | None:
        """The process id of service ``name`` when this stack started it."""
        return self._owned_pid(name)

    def status(self) -> list[ServiceStatus]:
        return [
            self._status("kafka", self.settings.kafka_bootstrap, self.kafka_dir / "kafka.log",
                         self._kafka_ready),
            self._status("redis", f"127.0.0.1:{self.settings.redis_port}",
                         self.redis_dir / "redis.log", self._redis_ready),
            self._status("milvus", self.settings.milvus_uri, self.milvus_dir / "milvus.log",
                         self._milvus_ready),
        ]

    def _ensure_kcat(self) -> None:
        """Debian's ``kcat``, the Kafka command-line client the README's "Your own feed"
        produces with: installed when missing, like ``redis-server``; the stack is up
        without it all the same."""
        try:
            ensure_debian_binary("kcat", "kcat")
        except (OSError, subprocess.CalledProcessError, StackError) as exc:
            self._say(f"kcat: not installed ({exc}); the stack does not need it")

    # ---- Milvus Lite -----------------------------------------------------------------

    def _up_milvus(self, timeout: float) -> None:
        if self._milvus_ready():
            self._say(f"milvus: up at {self.settings.milvus_uri}")
            return
        self.milvus_dir.mkdir(parents=True, exist_ok=True)
        log = self.milvus_dir / "milvus.log"
        binary = str(Path(sys.executable).parent / "milvus-lite")
        cmd = [binary, "server", "--data-dir", str(self.milvus_dir / "data"),
               "--host", "127.0.0.1", "--port", str(self.settings.milvus_port)]
        pid = self._spawn("milvus", cmd, log)
        self._wait("milvus", pid, self._milvus_ready, timeout, log)

    def _milvus_ready(self) -> bool:
        if not _port_open(self.settings.milvus_port):
            return False
        from driftline.adapters.vectors import blocking_client

        try:
            client = blocking_client(self.settings.with_overrides(milvus_timeout_seconds=3.0))
            try:
                client.list_collections()
            finally:
                client.close()
            return True
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            return False

    # ---- Redis -----------------------------------------------------------------------

    def _up_redis(self, timeout: float) -> None:
        if self._redis_ready():
            self._say(f"redis: up at 127.0.0.1:{self.settings.redis_port}")
            return
        binary = ensure_redis_server()
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        log = self.redis_dir / "redis.log"
        # An append-only file: the features could be rebuilt from Kafka, but the erasure
        # register, the frozen embedder and the checkpoints are state of their own.
        cmd = [binary, "--bind", "127.0.0.1", "--port", str(self.settings.redis_port),
               "--dir", str(self.redis_dir), "--save", "", "--appendonly", "yes",
               "--appendfsync", "everysec",
               "--daemonize", "no", "--protected-mode", "yes"]
        pid = self._spawn("redis", cmd, log)
        self._wait("redis", pid, self._redis_ready, timeout, log)

    def _redis_ready(self) -> bool:
        try:
            address = ("127.0.0.1", self.settings.redis_port)
            with socket.create_connection(address, timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    # ---- Kafka -----------------------------------------------------------------------

    def _up_kafka(self, timeout: float) -> None:
        if self._kafka_ready():
            self._say(f"kafka: up at {self.settings.kafka_bootstrap}")
            return
        broker_port = self.settings.kafka_port
        controller_port = self.settings.kafka_controller_port
        if _port_open(broker_port) or _port_open(controller_port):
            raise StackError(
                f"kafka: port {broker_port} or {controller_port} is taken "
                "by a process that is not a ready Kafka broker; set DRIFTLINE_KAFKA_PORT / "
                "DRIFTLINE_CONTROLLER_PORT or stop it")
        self.ensure_jars()
        java = shutil.which("java")
        if java is None:
            raise StackError("kafka: `java` is not on PATH (Java 17 is needed)")
        self.kafka_dir.mkdir(parents=True, exist_ok=True)
        props = self._write_kafka_config()
        classpath = f"{self.jar_dir}/*"
        jvm = [java, f"-Xmx{self.settings.kafka_heap}", f"-Xms{self.settings.kafka_heap}",
               "-XX:+UseG1GC", "-Djava.awt.headless=true",
               f"-Dlog4j.configuration=file:{self.kafka_dir / 'log4j.properties'}",
               "-cp", classpath]
        if not (self.kafka_dir / "logs" / "meta.properties").exists():
            self._say("kafka: formatting KRaft storage")
            cluster_id = subprocess.run(
                [*jvm, "kafka.tools.StorageTool", "random-uuid"],
                check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            subprocess.run(
                [*jvm, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props),
                 "--ignore-formatted"], check=True, capture_output=True, text=True)
        log = self.kafka_dir / "kafka.log"
        pid = self._spawn("kafka", [*jvm, "kafka.Kafka", str(props)], log)
        self._wait("kafka", pid, self._kafka_ready, timeout, log)

    def ensure_jars(self) -> Path:
        """Resolve the broker's jars into the cache, once."""
        marker = self.jar_dir / ".complete"
        if marker.exists():
            return self.jar_dir
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError("kafka: `mvn` is not on PATH (Maven resolves the broker's jars)")
        self._say(f"kafka: resolving Apache Kafka {self.settings.kafka_version} jars from "
                  f"Maven Central into {self.jar_dir}")
        self.jar_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(POM), "dependency:copy-dependencies",
             f"-Dkafka.version={self.settings.kafka_version}", "-DincludeScope=runtime",
             f"-DoutputDirectory={self.jar_dir}"], check=True)
        marker.write_text("ok\n")
        return self.jar_dir

    def _write_kafka_config(self) -> Path:
        broker_port = self.settings.kafka_port
        controller_port = self.settings.kafka_controller_port
        props = self.kafka_dir / "server.properties"
        props.write_text(f"""\
# Written by `driftline stack up`: a single KRaft node, broker and controller combined.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{broker_port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={self.kafka_dir / 'logs'}
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=168
""")
        (self.kafka_dir / "log4j.properties").write_text(LOG4J_PROPERTIES)
        return props

    def _kafka_ready(self) -> bool:
        if not _port_open(self.settings.kafka_port):
            return False
        from confluent_kafka.admin import AdminClient

        try:
            admin = AdminClient({"bootstrap.servers": self.settings.kafka_bootstrap,
                                 "socket.timeout.ms": 2000})
            admin.list_topics(timeout=3)
            return True
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            return False

    # ---- processes -------------------------------------------------------------------

    def _pidfile(self, name: str) -> Path:
        return self.data / f"{name}.pid"

    def _owned_pid(self, name: str) -> int | None:
        try:
            pid = int(self._pidfile(name).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def _spawn(self, name: str, cmd: list[str], log: Path) -> int:
        self._say(f"{name}: starting, log in {log}")
        with open(log, "ab") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self._pidfile(name).write_text(f"{proc.pid}\n")
        return proc.pid

    def _wait(self, name: str, pid: int, ready, timeout: float, log: Path) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                self._say(f"{name}: ready (pid {pid})")
                return
            if not _alive(pid):
                tail = _tail(log)
                raise StackError(f"{name}: exited while starting; last lines of {log}:\n{tail}")
            time.sleep(0.5)
        raise StackError(f"{name}: not ready after {timeout:.0f}s; see {log}")

    def _status(self, name: str, address: str, log: Path, ready) -> ServiceStatus:
        pid = self._owned_pid(name)
        return ServiceStatus(name, ready(), pid, address, log, owned=pid is not None)

    def _say(self, msg: str) -> None:
        print(msg, file=self.out, flush=True)


def ensure_redis_server() -> str:
    """The path of ``redis-server``, installing Debian's package when it is missing."""
    return ensure_debian_binary("redis-server", "redis-server")


def ensure_debian_binary(binary: str, package: str) -> str:
    """The path of ``binary``, installing Debian's ``package`` when it is missing (as root,
    or with passwordless sudo): the machines this runs on reach Debian's archive."""
    found = shutil.which(binary)
    if found:
        return found
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"{binary}: installing Debian's {package}", flush=True)
    wait = ["-o", "DPkg::Lock::Timeout=300"]  # another install may hold the lock
    subprocess.run([*prefix, "apt-get", *wait, "update", "-qq"], check=True, env=env)
    subprocess.run([*prefix, "apt-get", *wait, "install", "-y", "-qq",
                    "--no-install-recommends", package], check=True, env=env)
    found = shutil.which(binary) or f"/usr/bin/{binary}"
    if not Path(found).exists():
        raise StackError(f"{binary} is still missing after apt-get install {package}")
    return found


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True


def _terminate(pid: int, grace: float = 20.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
