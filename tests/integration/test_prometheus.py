"""Monitoring with Debian's Prometheus, for real: ``promtool`` checks the scrape config, the
alert rules and their unit tests (``monitoring/alerts_test.yml``) and lints the worker's
and the API's exposition; then a Prometheus server scrapes the session's worker and API
every second, evaluates the rules on what it scraped, and answers the dashboard's
queries. The compose wiring (``compose.yaml``, the Grafana provisioning) is checked
against the same files.

Prometheus and promtool come from Debian's ``prometheus`` package, installed when missing
(``ensure_debian_binary``). The package's own service is never used: the server here
listens on a free loopback port and keeps its data in the test's temporary directory.

The records sent are pricing ride requests of zones of their own, without labels: they
change no count that another test asserts exactly (the fraud tests count fraud events)."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from driftline.adapters.kafka_admin import ensure_pipeline_topics
from driftline.tools.host import ensure_debian_binary, free_port
from driftline.tools.processes import api_process, api_url, http_ok
from monitoring.scrape import scrape
from streams.generators.pricing import PricingGenerator, PricingStreamConfig
from tests.integration.conftest import call, send, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
GRAFANA = MONITORING / "grafana"

# `promtool check metrics` findings on our exposition that are accepted, as
# (metric, problem). Any other finding fails the test: a new metric must follow the
# naming conventions, or be added here with the reason.
ACCEPTED_LINT: set[tuple[str, str]] = set()


@pytest.fixture(scope="module")
def promtool() -> str:
    return ensure_debian_binary("promtool", "prometheus")


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    return ensure_debian_binary("prometheus", "prometheus")


def promtool_run(promtool: str, *args: str, stdin: bytes | None = None,
                 cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], input=stdin, capture_output=True, cwd=cwd,
                          timeout=60)


def output(proc: subprocess.CompletedProcess) -> str:
    return (proc.stdout + proc.stderr).decode(errors="replace")


# ---- the files, by promtool -------------------------------------------------------------

def test_alert_rules_are_valid_and_pass_their_unit_tests(promtool):
    checked = promtool_run(promtool, "check", "rules", "monitoring/alerts.yml")
    assert checked.returncode == 0, output(checked)
    tested = promtool_run(promtool, "test", "rules", "alerts_test.yml", cwd=MONITORING)
    assert tested.returncode == 0, output(tested)
    assert "SUCCESS" in output(tested)


def test_the_compose_scrape_config_is_valid(promtool):
    checked = promtool_run(promtool, "check", "config", "monitoring/prometheus.yml")
    assert checked.returncode == 0, output(checked)
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
            for job in config["scrape_configs"]}
    assert jobs["worker"] == ["worker:6066"]
    assert jobs["api"] == ["api:8080"]
    assert jobs["retrainer"] == ["retrainer:6067"]


def test_compose_runs_prometheus_and_grafana_on_these_files():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    # The scrape targets are compose services, on the ports they publish.
    for name, port in (("worker", 6066), ("api", 8080), ("retrainer", 6067)):
        assert f"127.0.0.1:{port}:{port}" in services[name]["ports"]

    def mounts(service: str) -> dict[str, str]:
        out = {}
        for volume in services[service]["volumes"]:
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{service} mounts missing {source}"
                out[target] = str((ROOT / source).resolve().relative_to(ROOT))
        return out

    prometheus = services["prometheus"]
    assert prometheus["ports"] == ["127.0.0.1:9090:9090"]
    assert mounts("prometheus") == {"/etc/prometheus/prometheus.yml": "monitoring/prometheus.yml",
                                    "/etc/prometheus/alerts.yml": "monitoring/alerts.yml"}
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]

    grafana = services["grafana"]
    assert grafana["ports"] == ["127.0.0.1:3000:3000"]
    grafana_mounts = mounts("grafana")
    assert grafana_mounts["/etc/grafana/provisioning"] == "monitoring/grafana/provisioning"
    dashboards_dir = next(t for t, s in grafana_mounts.items()
                          if s == "monitoring/grafana/dashboards")
    # The provisioning points at the mounted dashboards and at the compose Prometheus.
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "driftline.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == dashboards_dir
    datasource = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    source = datasource["datasources"][0]
    assert source["url"] == "http://prometheus:9090"
    for panel_source in dashboard_datasources():
        assert panel_source == {"type": "prometheus", "uid": source["uid"]}


# ---- the exposition, by promtool ---------------------------------------------------------

def lint(promtool: str, url: str) -> set[tuple[str, str]]:
    """`promtool check metrics` on the page at ``url``: its findings as (metric, problem).
    It exits 0 when clean, 3 with lint findings, 1 when the page does not parse."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read()
    assert b"driftline_" in text
    checked = promtool_run(promtool, "check", "metrics", stdin=text)
    assert checked.returncode in (0, 3), output(checked)
    findings = set()
    for line in checked.stderr.decode().splitlines():
        metric, _, problem = line.strip().partition(" ")
        if metric:
            findings.add((metric, problem))
    assert (checked.returncode == 3) == bool(findings), output(checked)
    return findings


def test_the_worker_and_api_expositions_pass_promtool_check_metrics(promtool, settings, api,
                                                                    traffic, logs):
    findings = {
        "worker": lint(promtool, f"http://127.0.0.1:{settings.worker_port}/metrics"),
        "api": lint(promtool, f"{api}/metrics"),
    }
    # compose.yaml serves with `--workers 2`: the multiprocess exposition, summed over
    # the pool's processes, is another text.
    pool_settings = settings.with_overrides(api_port=free_port())
    pool = api_process(pool_settings, logs / "prometheus-test", workers=2).start()
    try:
        pool_url = api_url(pool_settings)
        status, _ = call(f"{pool_url}/v1/score/pricing", traffic["ride"])
        assert status == 200
        findings["api --workers 2"] = lint(promtool, f"{pool_url}/metrics")
    finally:
        pool.stop()
    unexpected = {where: sorted(found - ACCEPTED_LINT) for where, found in findings.items()}
    assert not any(unexpected.values()), unexpected


# ---- a Prometheus server scraping the session's worker and API ---------------------------

@pytest.fixture(scope="module")
def prometheus(prometheus_binary, promtool, settings, worker, api, tmp_path_factory):
    """Debian's Prometheus on a free loopback port, on ``monitoring/prometheus.yml`` with
    its targets swapped for the session's worker and API, itself, and a retrainer that
    does not run (a closed port), scraping and evaluating every second; its base URL."""
    tmp = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    port = free_port()
    targets = {"worker": f"127.0.0.1:{settings.worker_port}",
               "api": f"{settings.api_host}:{settings.api_port}",
               "retrainer": f"127.0.0.1:{free_port()}",  # nothing listens there
               "prometheus": f"127.0.0.1:{port}"}
    config["global"].update(scrape_interval="1s", scrape_timeout="1s",
                            evaluation_interval="1s")
    config["rule_files"] = [str(MONITORING / name) for name in config["rule_files"]]
    config["scrape_configs"] = [
        {**job, "static_configs": [{"targets": [targets[job["job_name"]]]}]}
        for job in config["scrape_configs"] if job["job_name"] in targets]
    assert [job["job_name"] for job in config["scrape_configs"]] == list(targets)
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    checked = promtool_run(promtool, "check", "config", str(path))
    assert checked.returncode == 0, output(checked)

    log = tmp / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [prometheus_binary, f"--config.file={path}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {proc.returncode}:\n"
                                     f"{log.read_text()[-3000:]}")
            return http_ok(f"{base}/-/ready")

        wait_for(ready, 30, "prometheus ready", interval=0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def prom_get(base: str, path: str, **params: str) -> dict:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else f"{base}{path}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]


def query(base: str, promql: str) -> list[dict]:
    data = prom_get(base, "/api/v1/query", query=promql)
    assert data["resultType"] == "vector", data
    return data["result"]


def scalar(base: str, promql: str) -> float | None:
    result = query(base, promql)
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


# What the test's Prometheus should see of its targets.
SCRAPED = {"worker": "up", "api": "up", "retrainer": "down", "prometheus": "up"}


def targets_up(base: str) -> dict[str, str]:
    active = prom_get(base, "/api/v1/targets")["activeTargets"]
    return {t["labels"]["job"]: t["health"] for t in active}


@pytest.fixture(scope="module")
def traffic(settings, worker, api, worker_metrics, prometheus):
    """Rides sent to the worker in two rounds, each seen by Prometheus before the next (so
    that rates over its samples are above zero even for series the rides create), and
    one scored by the API."""
    wait_for(lambda: targets_up(prometheus) == SCRAPED, 30,
             "prometheus scraping the worker and the API", interval=0.2)
    topics = ensure_pipeline_topics(settings, "pricing")
    run_id = uuid.uuid4().hex[:8]
    rides = [e.record.model_copy(update={"zone_id": f"{run_id}-{e.record.zone_id}"})
             for e in PricingGenerator(PricingStreamConfig(
                 events=40, seed=3, run_id=run_id, drift_at=None,
                 start_time=time.time() - 20)).emissions()
             if e.kind == "event"]
    assert len(rides) == 40
    counted = {"pipeline": "pricing", "kind": "event", "outcome": "ok"}
    promql = ('sum(driftline_events_total{job="worker", pipeline="pricing", kind="event", '
              'outcome="ok"})')
    for batch in (rides[:20], rides[20:]):
        before = worker_metrics().value("driftline_events_total", **counted)
        send(settings, topics.events, [(r.zone_id, r.to_json()) for r in batch])
        wait_for(lambda b=before, n=len(batch):
                 worker_metrics().value("driftline_events_total", **counted) >= b + n,
                 60, "the worker processing the rides", interval=0.2)
        processed = worker_metrics().value("driftline_events_total", **counted)
        wait_for(lambda p=processed: (scalar(prometheus, promql) or 0) >= p, 30,
                 "prometheus seeing the rides processed", interval=0.2)
    ride = {**rides[-1].model_dump(), "event_id": f"{run_id}-scored", "ts": time.time()}
    status, body = call(f"{api}/v1/score/pricing", ride)
    assert status == 200, body
    return {"ride": ride, "events": processed}


def test_prometheus_scrapes_the_worker_and_the_api(prometheus, traffic, api):
    # (A scrape slower than the 1 s timeout, on a busy worker, shows down until the next.)
    wait_for(lambda: targets_up(prometheus) == SCRAPED, 30, "the targets scraped",
             interval=0.2)
    assert (scalar(prometheus, 'sum(driftline_events_total{job="worker", pipeline="pricing", '
                               'kind="event", outcome="ok"})') or 0) >= traffic["events"]
    assert (scalar(prometheus, 'sum(driftline_feature_freshness_seconds_count{job="worker", '
                               'pipeline="pricing"})') or 0) >= 40
    # The API's counters, once it has scored: the same numbers as its /metrics page.
    served = scrape(f"{api}/metrics").value("driftline_http_requests_total",
                                            route="/v1/score/{pipeline}", status="200")
    assert served >= 1
    promql = ('sum(driftline_http_requests_total{job="api", route="/v1/score/{pipeline}", '
              'method="POST", status="200"})')
    wait_for(lambda: (scalar(prometheus, promql) or 0) >= served, 30,
             "prometheus seeing the API's requests", interval=0.2)
    wait_for(lambda: (scalar(prometheus, 'sum(driftline_api_scores_total{job="api", '
                                         'pipeline="pricing"})') or 0) >= 1,
             30, "prometheus seeing the API's scores", interval=0.2)


def test_prometheus_evaluates_every_rule_on_the_scraped_series(prometheus, traffic):
    declared = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
    expected = {g["name"]: [r.get("record") or r.get("alert") for r in g["rules"]]
                for g in declared}

    def loaded() -> dict[str, list[dict]]:
        return {g["name"]: g["rules"] for g in prom_get(prometheus, "/api/v1/rules")["groups"]}

    assert {name: [r["name"] for r in rules] for name, rules in loaded().items()} == expected
    # Every rule evaluated without an error (a many-to-many match on real labels would
    # show here), after a scrape of the rides.
    wait_for(lambda: all(r["health"] == "ok" for rules in loaded().values() for r in rules),
             30, "every rule evaluated", interval=0.2)
    errors = [(r["name"], r.get("lastError")) for rules in loaded().values() for r in rules
              if r.get("lastError")]
    assert not errors, errors
    # The recording rules produce series from the real ones.
    wait_for(lambda: (scalar(prometheus, 'pipeline_kind:driftline_events:rate5m'
                                         '{pipeline="pricing", kind="event"}') or 0) > 0,
             30, "the events rate recorded", interval=0.2)
    wait_for(lambda: (scalar(prometheus, 'job_route:driftline_http_requests:rate5m'
                                         '{job="api", route="/metrics"}') or 0) > 0,
             30, "the API's request rate recorded", interval=0.2)

    # The alerts, on real targets: the retrainer that does not answer is a target down
    # (pending: its `for` is 2 minutes), and only it.
    def alerts(name: str, **labels: str) -> list[dict]:
        return [a for a in prom_get(prometheus, "/api/v1/alerts")["alerts"]
                if a["labels"]["alertname"] == name and labels.items() <= a["labels"].items()]

    # (A busy worker may miss a 1 s scrape and be pending for a moment too: the retrainer's
    # alert is the one asserted.)
    wait_for(lambda: bool(alerts("DriftlineTargetDown", job="retrainer")), 30,
             "the retrainer seen down", interval=0.2)
    [down] = alerts("DriftlineTargetDown", job="retrainer")
    assert down["state"] == "pending"
    assert down["labels"]["job"] == "retrainer" and down["labels"]["severity"] == "critical"
    assert down["annotations"]["summary"] == \
        f"Driftline retrainer is down ({down['labels']['instance']})"
    assert not alerts("HighErrorRate")


# ---- the Grafana dashboard's queries, on the same server ---------------------------------

def dashboards() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((GRAFANA / "dashboards").glob("*.json"))]


def walk_panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def dashboard_datasources():
    for board in dashboards():
        for panel in walk_panels(board["panels"]):
            if panel.get("type") != "row":
                yield panel["datasource"]
                for target in panel.get("targets", []):
                    yield target["datasource"]
        for annotation in board["annotations"]["list"]:
            if annotation.get("builtIn"):
                continue
            yield annotation["datasource"]
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                yield variable["datasource"]


GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h",
                     "$pipeline": ".+"}


def expand(expr: str) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: GRAFANA_VARIABLES[f"${m.group(1)}"], expr)


def test_every_dashboard_query_runs_on_prometheus(prometheus, traffic):
    queries = []
    for board in dashboards():
        assert any(v["name"] == "pipeline" for v in board["templating"]["list"])
        for panel in walk_panels(board["panels"]):
            for target in panel.get("targets", []):
                queries.append((panel["title"], target["expr"]))
        for annotation in board["annotations"]["list"]:
            if not annotation.get("builtIn"):
                queries.append((annotation["name"], annotation["expr"]))
    assert len(queries) >= 15
    bad = []
    for title, expr in queries:
        try:
            prom_get(prometheus, "/api/v1/query", query=expand(expr))
        except urllib.error.HTTPError as exc:  # 400 with Prometheus' reason
            bad.append((title, expr, exc.read().decode(errors="replace")))
    assert not bad, bad
    # The pipeline variable's values, and panels that must show the session's traffic.
    pipelines = prom_get(prometheus, "/api/v1/label/pipeline/values",
                         **{"match[]": "driftline_events_total"})
    assert "pricing" in pipelines
    by_title = dict(queries)
    for title in ("Throughput (records/s)", "API requests/s by route"):
        wait_for(lambda t=title: bool(query(prometheus, expand(by_title[t]))), 30,
                 f"data in panel {title!r}", interval=0.2)
