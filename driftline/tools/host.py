"""What the local stack needs from this host, apart from its services: Debian binaries
installed when missing, private secret files, free ports, and the processes it starts
(alive, terminated, their logs' tails)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from driftline.adapters.config import read_secret, secret_path


class StackError(RuntimeError):
    """A service of the local stack could not be brought up."""


def ensure_secret(data_dir: Path, name: str, make) -> str:
    """The secret ``name`` of ``data_dir``'s secrets directory, written from ``make()``
    when missing (the file appears whole, once, even with two writers at a time). The
    directory is kept at mode 0700 and the file at 0600."""
    path = secret_path(data_dir, name)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    if not path.exists():
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
        write_private(tmp, f"{make()}\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    os.chmod(path, 0o600)
    value = read_secret(data_dir, name)
    if not value:
        raise StackError(f"{path} is empty: delete it and run `stack up` again")
    return value


def write_private(path: Path, text: str) -> None:
    """Write ``path`` readable and writable by its owner only, from its creation on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


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


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def alive(pid: int) -> bool:
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


def terminate(pid: int, grace: float = 20.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.2)
    if alive(pid):
        os.killpg(pid, signal.SIGKILL)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
