"""The monitoring dashboard of a real ``storeml serve``, in a real headless Chromium (selenium).

Monitor results are seeded into Redis with the monitor's own writer: calm windows, then one store
(``s-drift``) drifting on ``order_value`` with an open alert, another store's alert that resolved,
champion and challenger performance, and a health report. The browser logs in with an admin key
through the form, finds the alert and the plots, sorts and filters the store table and opens the
store's page. Screenshots go to pytest's ``tmp_path`` and are copied to ``tests/artifacts/``
(git-ignored); their paths are printed.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from storeml.connectors.monitor_store import MonitorStore
from storeml.settings import Settings
from tests.monitor_data import alert, seed

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DRIFTING = "s-drift"
STORES = [DRIFTING, "s-calm-01"] + [f"s-calm-{n:02d}" for n in range(2, 24)]


@pytest.fixture
def monitored(settings: Settings) -> Iterator[MonitorStore]:
    store = MonitorStore.from_settings(settings)
    seed(store, STORES, drifting=DRIFTING)
    hostile = alert("s-calm-05", 1, "resolved", statistic="psi")
    hostile["message"] = "<b>bold</b><script>alert(1)</script>"
    store.write_alert(hostile)
    yield store
    store.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (./scripts/dev setup)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1400,1000")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: Any, tmp_path: Path, name: str) -> Path:
    """A full-page screenshot in ``tmp_path``, copied to ``tests/artifacts/``."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(int(height) + 140, 800), 6000))
    driver.execute_script("window.scrollTo(0, 0)")
    path = tmp_path / name
    assert driver.save_screenshot(str(path)), "the screenshot was not written"
    ARTIFACTS.mkdir(exist_ok=True)
    kept = ARTIFACTS / name
    shutil.copyfile(path, kept)
    print(f"dashboard screenshot: {path} (copied to {kept})")
    return kept


def wait_for_heading(driver: Any, text: str) -> None:
    """Wait until the page (a new one after a click) has the heading ``text``."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(d: Any) -> bool:
        try:
            return any(h.text == text for h in d.find_elements(By.TAG_NAME, "h1"))
        except StaleElementReferenceException:
            return False

    WebDriverWait(driver, 30).until(shown, f"no heading {text!r} on {driver.current_url}")


def visible_stores(driver: Any) -> list[str]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "#stores tbody tr")
    return [r.get_attribute("data-store") for r in rows if r.is_displayed()]


def column_values(driver: Any, header: str) -> list[str]:
    from selenium.webdriver.common.by import By

    headers = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "#stores thead th")]
    index = next(i for i, text in enumerate(headers) if text.startswith(header))
    rows = driver.find_elements(By.CSS_SELECTOR, "#stores tbody tr")
    return [r.find_elements(By.TAG_NAME, "td")[index].get_attribute("data-v") for r in rows]


def test_dashboard_in_a_real_browser(
    monitored: MonitorStore, api_server: Any, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    server = api_server()
    browser.get(f"{server.url}/dashboard")
    # no key yet: the login form; the admin key logs in and the cookie carries the session
    browser.find_element(By.ID, "key").send_keys(server.admin_key)
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    wait_for_heading(browser, "Monitoring overview")
    assert browser.current_url.rstrip("/").endswith("/dashboard")

    open_alerts = browser.find_element(By.ID, "open-alerts").text
    assert DRIFTING in open_alerts and "order_value" in open_alerts
    assert "s-calm-01" not in open_alerts  # its alert resolved
    recent = browser.find_element(By.ID, "recent-alerts").text
    assert "resolved" in recent and "s-calm-01" in recent
    assert "<b>bold</b><script>alert(1)</script>" in recent  # shown as text, not run as HTML
    plots = browser.find_elements(By.CSS_SELECTOR, "svg.plot")
    drawn = [p for p in plots if int(p.get_attribute("data-points")) > 0]
    assert len(drawn) >= 2, [p.get_attribute("aria-label") for p in plots]
    assert browser.find_elements(By.CSS_SELECTOR, "svg.plot polyline")
    labels = " ".join(p.get_attribute("aria-label") for p in drawn)
    assert "customers-model: live AUC" in labels
    health = browser.find_element(By.ID, "health").text
    assert "customer-profiles" in health and "silent stores" in health

    # the table starts with the most worrying store; sorting by a column sorts both ways
    assert visible_stores(browser)[0] == DRIFTING
    header = next(
        th
        for th in browser.find_elements(By.CSS_SELECTOR, "#stores thead th")
        if th.text.startswith("orders max JS")
    )
    header.click()
    ascending = [float(v) for v in column_values(browser, "orders max JS")]
    assert ascending == sorted(ascending) and visible_stores(browser)[-1] == DRIFTING
    header.click()
    descending = [float(v) for v in column_values(browser, "orders max JS")]
    assert descending == sorted(descending, reverse=True)
    assert visible_stores(browser)[0] == DRIFTING
    store_header = browser.find_element(By.CSS_SELECTOR, "#stores thead th")
    store_header.click()
    assert visible_stores(browser) == sorted(STORES)

    # filtering: by text, then alerting stores only
    box = browser.find_element(By.ID, "store-filter")
    box.send_keys("calm-1")
    shown = visible_stores(browser)
    assert shown == [s for s in sorted(STORES) if "calm-1" in s] and len(shown) == 10
    assert browser.find_element(By.ID, "stores-shown").text == "10"
    box.clear()
    box.send_keys(" ")  # an input event, then back to empty
    box.send_keys("\b")
    assert len(visible_stores(browser)) == len(STORES)
    browser.find_element(By.ID, "alerting-only").click()
    assert visible_stores(browser) == [DRIFTING]
    screenshot(browser, tmp_path, "dashboard.png")

    # the drifting store's own page, through its link
    browser.find_element(By.CSS_SELECTOR, f'#stores a[href="/dashboard/stores/{DRIFTING}"]').click()
    wait_for_heading(browser, f"Store {DRIFTING}")
    plots = browser.find_elements(By.CSS_SELECTOR, "svg.plot")
    titles = [p.get_attribute("aria-label") for p in plots]
    assert "orders: Jensen-Shannon distance per column" in titles
    assert any(t.startswith("customers-model: AUC in store") for t in titles)
    assert all(int(p.get_attribute("data-points")) > 0 for p in plots), titles
    legend = browser.find_element(By.CSS_SELECTOR, "svg.plot").text
    assert "order_value" in legend
    screenshot(browser, tmp_path, "dashboard-store.png")

    browser.get(f"{server.url}/dashboard/models/customers-model")
    wait_for_heading(browser, "Model customers-model")
    titles = [p.get_attribute("aria-label") for p in browser.find_elements(By.CSS_SELECTOR, "svg")]
    assert "AUC, all stores" in titles and "Brier score, all stores" in titles
    screenshot(browser, tmp_path, "dashboard-model.png")
    assert server.admin_key not in server.output()


def test_dashboard_needs_an_admin_key(monitored: MonitorStore, api_server: Any) -> None:
    server = api_server(serve_key_cache_seconds=0)
    store_key = server.key("s-drift", "read")
    with httpx.Client(base_url=server.url, timeout=30) as web:
        for path in (
            "/dashboard",
            "/dashboard/stores/s-drift",
            "/dashboard/models/customers-model",
        ):
            answer = web.get(path)
            assert answer.status_code == 401, path
            assert 'action="/dashboard/login"' in answer.text
            assert "s-drift" not in answer.text.replace(path, "")  # nothing of the data
        assert web.get("/dashboard", headers={"Authorization": "Bearer nope"}).status_code == 401
        refused = web.get("/dashboard", headers={"Authorization": f"Bearer {store_key}"})
        assert refused.status_code == 403
        ok = web.get("/dashboard", headers={"Authorization": f"Bearer {server.admin_key}"})
        assert ok.status_code == 200 and "s-drift" in ok.text
        assert "script-src 'sha256-" in ok.headers["content-security-policy"]
        assert "&lt;b&gt;bold&lt;/b&gt;&lt;script&gt;" in ok.text and "<b>bold" not in ok.text

        assert web.get("/dashboard/login").status_code == 200
        bad = web.post("/dashboard/login", data={"key": store_key, "next": "/dashboard"})
        assert bad.status_code == 401 and COOKIE not in bad.headers.get("set-cookie", "")
        login = web.post(
            "/dashboard/login", data={"key": server.admin_key, "next": "//evil.example/x"}
        )
        assert login.status_code == 303 and login.headers["location"] == "/dashboard"
        cookie = login.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        for part in ("HttpOnly", "SameSite=strict", "Path=/dashboard"):
            assert part.lower() in cookie.lower(), cookie
        assert web.cookies.get(COOKIE)
        page = web.get("/dashboard/stores/s-drift")
        assert page.status_code == 200 and "Jensen-Shannon" in page.text
        assert web.get("/dashboard/stores/no-such-store").status_code == 404
        assert web.get("/dashboard/models/no-such-model").status_code == 404
        web.post("/dashboard/logout")
        assert web.get("/dashboard").status_code == 401
        # a revoked key's cookie no longer opens the pages
        web.post("/dashboard/login", data={"key": server.admin_key})
        assert web.get("/dashboard").status_code == 200
        server.keys.revoke(server.admin_key.split("_")[1])
        assert web.get("/dashboard").status_code == 401


def test_dashboard_without_auth(monitored: MonitorStore, api_server: Any) -> None:
    server = api_server(serve_auth=False)
    with httpx.Client(base_url=server.url, timeout=30) as web:
        answer = web.get("/dashboard")
        assert answer.status_code == 200 and "s-drift" in answer.text
        assert "Log out" not in answer.text
        document = web.get("/openapi.json").json()
        assert not [path for path in document["paths"] if path.startswith("/dashboard")]


COOKIE = "storeml_dashboard"
