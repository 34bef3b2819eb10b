"""`latigo web` in a real headless Chromium (Debian's chromium and chromium-driver, driven by selenium): the
page loads, shows the numbers of the database the test filled, runs no script of a model named like one, and
the model page draws a line per tag. Screenshots of each page are kept in test-artifacts/web/ at the
repository root and in the test's tmp dir."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from latigo.settings import DatabaseSettings
from latigo.storage import migrations
from latigo.storage.db import create_engine_for
from latigo.web.queries import read_only_engine
from latigo.web.server import WebServer
from tests.integration.test_web import SCRIPT, TOKEN, Filled, fill, serve
from tests.support.processes import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = REPO / "test-artifacts" / "web"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run")


@pytest.fixture(scope="module")
def database(tmp_path_factory) -> Iterator[tuple[str, Filled]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('web') / 'latigo.db'}"
    engine = create_engine_for(DatabaseSettings(url=url))
    migrations.upgrade(engine)
    filled = fill(engine)
    engine.dispose()
    yield url, filled


@pytest.fixture(scope="module")
def web_engine(database) -> Iterator[sa.Engine]:
    engine = read_only_engine(DatabaseSettings(url=database[0]))
    yield engine
    engine.dispose()


@pytest.fixture
def web(web_engine) -> Iterator[WebServer]:
    server = serve(web_engine)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def browser(tmp_path) -> Iterator[webdriver.Chrome]:
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not try to download a driver or a browser
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.add_argument("--window-size=1400,900")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def screenshot(driver: webdriver.Chrome, tmp_path: Path, name: str) -> Path:
    """The whole page (the window grown to its height), into test-artifacts/web/ and the tmp dir."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    chrome = driver.execute_script("return window.outerHeight - window.innerHeight")
    driver.set_window_size(1400, min(height + chrome, 8000))
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, ARTIFACTS / path.name)
    driver.set_window_size(1400, 900)
    return path


def no_alert(driver: webdriver.Chrome) -> None:
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert  # noqa: B018 (the property raises when no alert is open)


def text(driver: webdriver.Chrome, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def test_overview_shows_the_filled_database(web, browser, database, tmp_path):
    _url, filled = database
    browser.get(web.url)
    assert browser.title == "latigo — pipeline"
    no_alert(browser)
    assert text(browser, "backlog") == str(filled.backlog)
    assert text(browser, "throughput") == str(filled.done)
    assert text(browser, "failed-24h") == str(filled.failed)
    assert text(browser, "executors-seen") == str(len(filled.executors))
    assert text(browser, "models-above") == "2"
    rows = browser.find_elements(By.CSS_SELECTOR, "#models tr.model")
    assert [row.get_attribute("data-model") for row in rows] == list(filled.order)
    assert [row.find_element(By.CSS_SELECTOR, "td.name").text for row in rows] == list(filled.order)
    shown = {row.get_attribute("data-model"): row.find_element(By.CSS_SELECTOR, "td.confidence").text
             for row in rows}
    for name, value in filled.confidence:
        assert shown[name] == value
    above = [row.get_attribute("data-model") for row in browser.find_elements(By.CSS_SELECTOR, "#models tr.above")]
    assert above == ["pump-hot", SCRIPT]
    assert rows[0].find_element(By.CSS_SELECTOR, "td.last-window").text == filled.last_window
    reasons = {row.get_attribute("data-reason"): row.find_element(By.CSS_SELECTOR, "td.count").text
               for row in browser.find_elements(By.CSS_SELECTOR, "#reasons tr[data-reason]")}
    assert reasons == {reason: str(count) for reason, count in filled.reasons}
    assert len(browser.find_elements(By.CSS_SELECTOR, "#models svg.spark polyline")) == 3
    assert browser.find_elements(By.TAG_NAME, "script") == []
    screenshot(browser, tmp_path, "overview")
    no_alert(browser)


def test_model_pages_draw_one_line_per_tag(web, browser, database, tmp_path):
    _url, filled = database
    browser.get(web.url)
    browser.find_element(By.LINK_TEXT, SCRIPT).click()  # the link of the model named like a script
    assert browser.current_url == web.url + "models/" + quote(SCRIPT, safe="")
    no_alert(browser)
    assert browser.find_element(By.TAG_NAME, "h1").text.endswith(SCRIPT)
    lines = browser.find_elements(By.CSS_SELECTOR, "svg.tag-chart polyline")
    assert [line.get_attribute("data-tag") for line in lines] == sorted(filled.script_tags)  # by tag
    legend = [item.text for item in browser.find_elements(By.CSS_SELECTOR, ".legend span")]
    assert legend == sorted(filled.script_tags)  # the tag named like an <img> is text
    assert text(browser, "confidence") == "1.75"
    screenshot(browser, tmp_path, "model-script")
    no_alert(browser)

    browser.get(web.url + "models/pump-hot")
    lines = browser.find_elements(By.CSS_SELECTOR, "svg.tag-chart polyline")
    assert [line.get_attribute("data-tag") for line in lines] == list(filled.tags)
    assert all(len(line.get_attribute("points").split()) == 18 for line in lines)
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.total-chart polyline")) == 1
    assert "time (UTC)" in browser.find_element(By.CSS_SELECTOR, "svg.tag-chart").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#tasks tbody tr")) == 18
    screenshot(browser, tmp_path, "model")
    browser.find_element(By.LINK_TEXT, "tag-anomaly-scaled").click()
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.tag-chart polyline")) == len(filled.tags)
    no_alert(browser)


def test_a_token_in_the_address_lets_the_links_work(web_engine, browser, database):
    server = serve(web_engine, token=TOKEN)
    try:
        browser.get(server.url)
        assert "token required" in browser.find_element(By.TAG_NAME, "body").text
        browser.get(server.url + "?token=" + TOKEN)
        assert text(browser, "backlog") == str(database[1].backlog)
        browser.find_element(By.LINK_TEXT, "pump-hot").click()  # no token in the link: the cookie carries it
        assert len(browser.find_elements(By.CSS_SELECTOR, "svg.tag-chart polyline")) == 3
        no_alert(browser)
    finally:
        server.shutdown()
        server.server_close()


def test_an_operator_searches_filters_and_pages(web, browser, database, tmp_path):
    """Typed into the search box and submitted (the form is allowed by the page's own policy), then the
    state link clicked, then a hostile search: each step a shareable address, nothing run."""
    _url, filled = database
    browser.get(web.url)
    box = browser.find_element(By.CSS_SELECTOR, "input[type=search]")
    box.send_keys("PUMP")
    box.submit()
    assert browser.current_url == web.url + "?q=PUMP"
    rows = browser.find_elements(By.CSS_SELECTOR, "#models tr.model")
    assert [row.get_attribute("data-model") for row in rows] == [m for m in filled.order if m.startswith("pump")]
    assert text(browser, "shown") == "1–4 of 4"
    browser.find_element(By.ID, "state-late").click()
    assert browser.current_url == web.url + "?q=PUMP&state=late"
    rows = browser.find_elements(By.CSS_SELECTOR, "#models tr.model")
    assert [row.get_attribute("data-model") for row in rows] == ["pump-broken", "pump-queued"]
    assert browser.find_element(By.CSS_SELECTOR, "input[type=search]").get_attribute("value") == "PUMP"
    screenshot(browser, tmp_path, "overview-search-late")
    browser.get(web.url + "?q=" + quote("<script>"))
    no_alert(browser)
    assert browser.find_elements(By.TAG_NAME, "script") == []
    rows = browser.find_elements(By.CSS_SELECTOR, "#models tr.model")
    assert [row.find_element(By.CSS_SELECTOR, "td.name").text for row in rows] == [SCRIPT]
    assert browser.find_element(By.CSS_SELECTOR, "input[type=search]").get_attribute("value") == "<script>"
    screenshot(browser, tmp_path, "overview-search-hostile")
