"""The live dashboard in a real browser: Debian's headless Chromium opens ``/dashboard`` on
an API with tokens configured (the dashboard's paths are open by default) while fraud events
and their labels flow through a worker, takes a screenshot, and reads the figures off the
page as they change. Worker and API run in a namespace of this module's own: the session's
fraud topics have absolute counts that later tests check."""

from __future__ import annotations

import struct
import threading
import time
import uuid

import pytest

from driftline.tools.host import ensure_debian_binary
from driftline.tools.synthetic import produce
from streams.catalog.fraud import FRAUD
from streams.generators import pipeline_history
from tests.integration.conftest import TOKENS, call, own_namespace, wait_for

pytestmark = pytest.mark.integration

EVENTS = 2400
RATE = 150.0          # events per wall-clock second: about 16 s of flow
LABEL_DELAY = 150.0   # event-time seconds (2 to 3 s of wall time at this rate)
PNG = b"\x89PNG\r\n\x1a\n"


# The session's fraud topics have absolute counts that later tests check.
settings, logs, worker, api, worker_metrics = own_namespace("dash", ["fraud"])


@pytest.fixture(scope="module")
def browser():
    # A fresh CI machine gets Debian's chromium and its driver here.
    chromium = ensure_debian_binary("chromium", "chromium")
    chromedriver = ensure_debian_binary("chromedriver", "chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1300", "--hide-scrollbars", "--lang=en-GB"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def _reader(driver):
    from selenium.common.exceptions import NoSuchElementException
    from selenium.webdriver.common.by import By

    def value(element_id: str) -> float | None:
        """The figure an element shows (its ``data-value``), None while it shows none."""
        try:
            raw = driver.find_element(By.ID, element_id).get_attribute("data-value")
        except NoSuchElementException:
            return None
        return float(raw) if raw else None

    def text(element_id: str) -> str:
        """What an element shows, folded away (an idle pipeline's figures) or not."""
        try:
            return (driver.find_element(By.ID, element_id).get_attribute("textContent")
                    or "").strip()
        except NoSuchElementException:
            return ""

    def displayed(element_id: str) -> bool:
        try:
            return driver.find_element(By.ID, element_id).is_displayed()
        except NoSuchElementException:
            return False

    return value, text, displayed


@pytest.mark.timeout(180)  # the session's worker and API may start first
def test_the_dashboard_shows_live_figures_as_events_flow(settings, worker, api, logs,
                                                         browser):
    value, text, displayed = _reader(browser)
    # Open without a token, though the API has tokens: the dashboard's paths are open.
    assert call(f"{api}/dashboard/data", token=None)[0] == 200
    browser.get(f"{api}/dashboard")
    assert "Driftline" in browser.title
    wait_for(lambda: text("fraud-events-rate") not in ("", "—")
             and text("updated") not in ("", "never"), 20,
             "the page to show the sampler's first rates")
    learned_before = value("fraud-learned") or 0.0

    run_id = uuid.uuid4().hex[:8]
    config, emissions = pipeline_history(FRAUD, EVENTS, time.time(), run_id=run_id,
                                         card_prefix=f"card-dash-{run_id}",
                                         label_delay=LABEL_DELAY)
    produced: list = []

    def stream() -> None:
        def keep(items):
            for e in items:
                if e.kind == "event":
                    produced.append(e.record)
                yield e

        produce(settings, "fraud", keep(emissions), speed=RATE / config.events_per_second)

    def score_some(stop: threading.Event) -> None:
        # A few scores through the API, so that its figures move too.
        while not stop.wait(0.25):
            if produced:
                call(f"{api}/v1/score/fraud?explain=false", produced[-1].model_dump(),
                     token=TOKENS["scorer"])

    producer = threading.Thread(target=stream, daemon=True)
    stop_scoring = threading.Event()
    scorer = threading.Thread(target=score_some, args=(stop_scoring,), daemon=True)
    producer.start()
    scorer.start()
    try:
        # Live: the events/s figure becomes positive and changes from one sample to the
        # next, and the labels-learned total climbs, all read off the page.
        events_rates: set[float] = set()
        learned: set[float] = set()

        def live() -> bool:
            rate = value("fraud-events-rate")
            if rate:
                events_rates.add(rate)
            total = value("fraud-learned")
            if total is not None and total > learned_before:
                learned.add(total)
            return len(events_rates) >= 3 and len(learned) >= 2
        wait_for(live, 30, "positive, changing events/s and labels learned on the page",
                 interval=0.3)
        assert min(events_rates) > 0
        assert all(displayed(f"fraud-{k}") for k in ("version", "events-rate", "labels-rate",
                                                      "learned", "metric"))
        wait_for(lambda: (value("fraud-labels-rate") or 0) > 0
                 and (value("api-rate") or 0) > 0 and value("api-p99") is not None, 15,
                 "labels learned/s, API requests/s and p99 latency on the page")
        wait_for(lambda: value("fraud-metric") is not None, 10, "the prequential ROC AUC")
        assert 0.0 <= value("fraud-metric") <= 1.0
        time.sleep(2)  # one more sample on the charts
        shot = logs / "dashboard.png"
        browser.save_screenshot(str(shot))
    finally:
        producer.join(60)
        stop_scoring.set()
        scorer.join(10)

    png = shot.read_bytes()
    assert png[:8] == PNG, "the screenshot is not a PNG"
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
    assert width >= 1000 and height >= 800, (width, height)
    assert len(png) > 40_000, f"a {len(png)}-byte screenshot is too plain to hold the page"
    assert "events/s" in browser.page_source and "labels learned/s" in browser.page_source

    # The model version shown is the one the API serves (they agree once learning settles).
    def same_version() -> bool:
        code, health = call(f"{api}/healthz", token=None)
        shown = text("fraud-version")
        return code == 200 and shown.startswith("v") and shown == health["models"]["fraud"]
    wait_for(same_version, 30, "the page's model version to equal /healthz's", interval=0.5)
