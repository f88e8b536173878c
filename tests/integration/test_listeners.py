"""Nothing listens beyond loopback by default (issue 15): the worker, an API pool on the
default host without tokens, and the stack's Kafka, Redis and Milvus Lite, each read from
the kernel's socket tables (``/proc/<pid>/net/tcp{,6}``, LISTEN entries, matched to the
process by the socket inodes of ``/proc/<pid>/fd``). And the worker serves none of Faust's
own pages: ``/table/<table>/<key>/`` served any card's amounts, merchants and event ids."""

from __future__ import annotations

import ipaddress
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from driftline.adapters.config import Settings
from driftline.tools.host import free_port
from driftline.tools.processes import api_process
from driftline.tools.stack import LocalStack

pytestmark = pytest.mark.integration

LISTEN = "0A"
DEFAULTS = Settings()


def descendants(pid: int) -> set[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        found.add(p)
        todo.extend(children.get(p, []))
    return found


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def address(hex_address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """A /proc/net/tcp{,6} ``local_address``: 32-bit words in host (little-endian) order."""
    ip_hex, port_hex = hex_address.split(":")
    raw = bytes.fromhex(ip_hex)
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw), int(port_hex, 16)


def listeners(pid: int) -> list[tuple[str, int]]:
    """The TCP sockets ``pid`` listens on: (address, port)."""
    mine = socket_inodes(pid)
    found = []
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            if fields[3] == LISTEN and fields[9] in mine:
                ip, port = address(fields[1])
                found.append((str(ip), port))
    return found


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def assert_loopback_only(name: str, pids: set[int]) -> None:
    found = [(pid, ip, port) for pid in sorted(pids) for ip, port in listeners(pid)]
    assert found, f"{name}: no listening socket found in {sorted(pids)}"
    beyond = [f"{ip}:{port} (pid {pid})" for pid, ip, port in found if not is_loopback(ip)]
    assert not beyond, f"{name} listens beyond loopback: {beyond}"


@pytest.fixture(scope="module")
def open_api(settings, logs):
    """An API pool on the default host, without tokens (the default): it must start."""
    s = settings.with_overrides(api_host=DEFAULTS.api_host, api_port=free_port(),
                                api_tokens="")
    proc = api_process(s, logs, workers=2).start()
    yield proc
    proc.stop()


def test_the_defaults_are_loopback():
    assert is_loopback(DEFAULTS.worker_host) and is_loopback(DEFAULTS.api_host)


def test_the_worker_listens_on_loopback_only(settings, worker):
    # The session's worker runs on the default host (a DRIFTLINE_WORKER_HOST set for the
    # tests would make this test meaningless, so it says so).
    assert settings.worker_host == DEFAULTS.worker_host, (
        f"DRIFTLINE_WORKER_HOST is set ({settings.worker_host}): unset it for this test")
    assert_loopback_only("the worker", descendants(worker.proc.pid))


def test_an_api_pool_without_tokens_listens_on_loopback_only(open_api):
    pids = descendants(open_api.proc.pid)
    assert len(pids) >= 3, pids  # the supervisor and its two API processes
    assert_loopback_only("the API", pids)


@pytest.mark.parametrize("name", ["kafka", "redis", "milvus"])
def test_the_stacks_services_listen_on_loopback_only(settings, name):
    pid = LocalStack(settings).pid(name)
    assert pid is not None, f"{name} was not started by `driftline stack up`"
    assert_loopback_only(name, descendants(pid))


@pytest.mark.parametrize("path", ["/table/", "/table/fraud-entity-state/",
                                  "/table/fraud-entity-state/card-00042/", "/router/",
                                  "/graph/", "/stats/", "/assignment/", "/performance/"])
def test_the_worker_serves_none_of_fausts_pages(settings, worker, path):
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{settings.worker_port}{path}", timeout=10)
    assert refused.value.code == 404


@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
def test_the_worker_still_serves_its_own_routes(settings, worker, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{settings.worker_port}{path}",
                                timeout=10) as resp:
        assert resp.status == 200
