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

``up`` first writes the stack's secrets into ``<data dir>/secrets/`` (mode 0700, each file
0600) when they are missing: the Redis password, and the key that signs the models
(:func:`driftline.adapters.signing.ensure_model_key`). Redis starts with an ACL file of the
data dir: the ``default`` user off, so a client without the password is refused, and the
one user the services authenticate as (``DRIFTLINE_REDIS_USERNAME``) with the password.
``Settings.from_env()`` reads the password from the same file.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from driftline.adapters.config import REDIS_PASSWORD_FILE, Settings, read_secret, secret_path
from driftline.adapters.signing import ensure_model_key
from driftline.tools.host import (
    StackError,
    alive,
    ensure_debian_binary,
    ensure_redis_server,
    ensure_secret,
    port_open,
    sha256,
    tail,
    terminate,
    write_private,
)

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


# The rules of the one Redis user the services authenticate as: every key, channel and
# command (one application user; the `default` user is off).
REDIS_USER_RULES = ("~*", "&*", "+@all")
# The `default` user, which unauthenticated connections are: off, and without a password,
# so no one is it. It keeps every permission all the same: Redis 7.0 replays the
# append-only file as `default`, and checks a transaction's commands (a Lua script's
# writes are logged as one) against its permissions at EXEC; with none (`user default
# off` alone means -@all) it drops them from the data it loads.
REDIS_DEFAULT_USER = "user default off ~* &* +@all"


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
        """Write the secrets that are missing, then bring the services up; a service
        already up is left as it is."""
        self.data.mkdir(parents=True, exist_ok=True)
        self.ensure_secrets()
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
            terminate(pid)
            self._pidfile(name).unlink(missing_ok=True)

    def pid(self, name: str) -> int | None:
        """The process id of service ``name`` when this stack started it."""
        return self._owned_pid(name)

    def status(self) -> list[ServiceStatus]:
        return [
            self._status("kafka", self.settings.kafka_bootstrap, self.kafka_dir / "kafka.log",
                         self._kafka_ready),
            self._status("redis", f"127.0.0.1:{self.settings.redis_port}",
                         self.redis_dir / "redis.log", self._redis_answers),
            self._status("milvus", self.settings.milvus_uri, self.milvus_dir / "milvus.log",
                         self._milvus_ready),
        ]

    def ensure_secrets(self) -> None:
        """The secrets directory (0700), the Redis password and the model key: each
        written (0600) when missing, never replaced."""
        ensure_secret(self.data, REDIS_PASSWORD_FILE, lambda: secrets.token_urlsafe(32))
        ensure_model_key(self.settings)

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
        if not port_open(self.settings.milvus_port):
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
        address = f"127.0.0.1:{self.settings.redis_port}"
        state = self._redis_state()
        deadline = time.monotonic() + timeout
        while state == "loading" and time.monotonic() < deadline:  # reading its AOF
            time.sleep(0.5)
            state = self._redis_state()
        if state == "ready":
            note = ""
            if self._redis_answers_anyone():
                note = ("; it still answers clients without the password (started before the "
                        "ACL) until its next start")
            self._say(f"redis: up at {address}{note}")
            return
        if state == "open":
            self._redis_open_note(address)
            return
        if state == "refused":
            raise StackError(
                f"redis: {address} answers but refuses the user {self.settings.redis_username!r} "
                f"with the password of {secret_path(self.data, REDIS_PASSWORD_FILE)} (or "
                "DRIFTLINE_REDIS_PASSWORD); set the password it was started with, or stop it "
                "(`driftline stack down` when driftline started it) and run `stack up` again")
        binary = ensure_redis_server()
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        log = self.redis_dir / "redis.log"
        acl = self._write_redis_acl()
        # An append-only file: the features could be rebuilt from Kafka, but the erasure
        # register, the frozen embedder and the checkpoints are state of their own.
        cmd = [binary, "--bind", "127.0.0.1", "--port", str(self.settings.redis_port),
               "--dir", str(self.redis_dir), "--save", "", "--appendonly", "yes",
               "--appendfsync", "everysec",
               "--daemonize", "no", "--protected-mode", "yes",
               "--aclfile", str(acl)]
        pid = self._spawn("redis", cmd, log)
        self._wait("redis", pid, self._redis_ready, timeout, log)

    def _redis_open_note(self, address: str) -> None:
        """A Redis that answers without a password: one started before the ACL. It is not
        restarted. When this stack started it, its user is added at once (clients with the
        password work from now on) and the `default` user is left on, so the clients
        already running are not cut off; it is off from the next start."""
        user = self.settings.redis_username
        if self._owned_pid("redis") is None:
            self._say(f"redis: up at {address}, not started by driftline and without a "
                      "password; left as it is")
            return
        import redis

        client = _redis_client(self.settings.redis_port)
        try:
            client.execute_command("ACL", "SETUSER", user, "reset", "on",
                                   "#" + sha256(self._redis_password()), *REDIS_USER_RULES)
        except redis.RedisError as exc:
            raise StackError(f"redis: could not add the ACL user {user!r} to the Redis "
                             f"running at {address}: {exc}") from exc
        finally:
            client.close()
        self._say(f"redis: up at {address}, started without a password: user {user!r} added "
                  "live; clients without the password are refused from its next start")

    def _redis_password(self) -> str:
        """The configured password, else the stack's file (the settings may predate it)."""
        return self.settings.redis_password or read_secret(self.data, REDIS_PASSWORD_FILE)

    def _write_redis_acl(self) -> Path:
        """The ACL file Redis starts with (0600, the password as its SHA-256): the
        `default` user off, the services' user on."""
        password = self._redis_password()
        if not password:
            raise StackError(f"redis: no password in {secret_path(self.data, REDIS_PASSWORD_FILE)}")
        acl = self.redis_dir / "users.acl"
        rules = " ".join(REDIS_USER_RULES)
        write_private(acl, f"{REDIS_DEFAULT_USER}\n"
                       f"user {self.settings.redis_username} on #{sha256(password)} {rules}\n")
        return acl

    def _redis_state(self) -> str:
        """``ready`` (PONG to this stack's user and password), ``open`` (PONG without a
        password: a Redis without the ACL), ``refused`` (it answers, and refuses both),
        ``loading`` (it is reading its append-only file) or ``down``."""
        import redis

        port = self.settings.redis_port
        if not port_open(port):
            return "down"
        password = self._redis_password()
        attempts = [(self.settings.redis_username, password)] if password else []
        for username, secret in [*attempts, (None, None)]:
            client = _redis_client(port, username, secret)
            try:
                client.ping()
                return "ready" if secret else "open"
            except redis.BusyLoadingError:
                return "loading"
            except redis.AuthenticationError:
                continue
            except redis.ResponseError as exc:
                if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                    continue
                return "refused"
            except (redis.RedisError, OSError):
                return "down"
            finally:
                client.close()
        return "refused"

    def _redis_ready(self) -> bool:
        return self._redis_state() == "ready"

    def _redis_answers_anyone(self) -> bool:
        """Whether a client without the password gets a PONG (the `default` user is on)."""
        import redis

        client = _redis_client(self.settings.redis_port)
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def _redis_answers(self) -> bool:
        return self._redis_state() in ("ready", "open", "refused", "loading")

    # ---- Kafka -----------------------------------------------------------------------

    def _up_kafka(self, timeout: float) -> None:
        if self._kafka_ready():
            self._say(f"kafka: up at {self.settings.kafka_bootstrap}")
            return
        broker_port = self.settings.kafka_port
        controller_port = self.settings.kafka_controller_port
        if port_open(broker_port) or port_open(controller_port):
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
        if not port_open(self.settings.kafka_port):
            return False
        from confluent_kafka.admin import AdminClient

        from driftline.adapters.kafka_clients import client_config

        try:
            admin = AdminClient({**client_config(self.settings), "socket.timeout.ms": 2000})
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
        return pid if alive(pid) else None

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
            if not alive(pid):
                last = tail(log)
                raise StackError(f"{name}: exited while starting; last lines of {log}:\n{last}")
            time.sleep(0.5)
        raise StackError(f"{name}: not ready after {timeout:.0f}s; see {log}")

    def _status(self, name: str, address: str, log: Path, ready) -> ServiceStatus:
        pid = self._owned_pid(name)
        return ServiceStatus(name, ready(), pid, address, log, owned=pid is not None)

    def _say(self, msg: str) -> None:
        print(msg, file=self.out, flush=True)


def _redis_client(port: int, username: str | None = None, password: str | None = None):
    """A one-shot client of the stack's Redis, quick to give up (status, readiness)."""
    import redis

    return redis.Redis(host="127.0.0.1", port=port, username=username, password=password,
                       socket_timeout=2, socket_connect_timeout=1, retry=None)
