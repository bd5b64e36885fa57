"""The admin dashboard (pygate/admin_static/) in a real browser: headless Chromium via Selenium.

A real ``pygate serve`` with ``[admin]`` (a token on a loopback listener) serves
the page, its script and stylesheet, and the JSON API the script reads
(``/routes``, ``/upstreams``, ``/stats``), in front of a loopback upstream. The
browser loads ``/#token=TOKEN``; the tests check that the page loads without a
console error, lists the configured routes and upstreams with their targets'
health and breaker state, that a route's charts move once traffic goes through
the gateway, and that without a token the API's 401 brings up the form that
takes it.

Chromium and its driver are Debian's (``make test`` installs ``chromium`` and
``chromium-driver``); without them these tests skip, or fail under ``CI=true``.
``PYGATE_DASHBOARD_SCREENSHOT=docs/dashboard.png`` saves the screenshot taken
with traffic there (it always goes to the test's temporary folder).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

STATIC = Path(__file__).resolve().parent.parent / "pygate" / "admin_static"
TOKEN = "dashboard-test-token"
ROUTES = ["users", "orders", "health"]
CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = ("/usr/bin/chromedriver",)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def first_existing(paths: tuple[str, ...], name: str) -> str | None:
    found = next((p for p in paths if os.path.exists(p)), None)
    return found or shutil.which(name)


# ---------------------------------------------------------------------------
# A browser
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = first_existing(CHROMIUM, "chromium")
    driver_path = first_existing(CHROMEDRIVER, "chromedriver")
    if chromium is None or driver_path is None:
        message = ("chromium and chromium-driver are not installed "
                   "(make test installs the Debian packages)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,1000",
                     "--disable-extensions", "--no-first-run"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: Any, dashboard: Dashboard) -> Iterator[Any]:
    """The browser, on a blank page with its console log read, for one test; blank again
    before the gateway stops (so that no poll of a stopped gateway is logged later)."""
    browser.get("about:blank")
    browser.get_log("browser")
    yield browser
    browser.get("about:blank")


def console_errors(driver: Any, allow: Callable[[str], bool] = lambda _: False) -> list[str]:
    """SEVERE lines of the browser's console since the last call (``allow``ed ones aside)."""
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and not allow(entry["message"])]


def wait_for(condition: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except Exception:  # the page is still being built
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.1)


# ---------------------------------------------------------------------------
# Servers in a thread of their own (Selenium's calls block)
# ---------------------------------------------------------------------------


class ThreadedApp:
    """An aiohttp application served on a free loopback port from its own thread."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app, access_log=None)
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        self.loop.run_until_complete(site.start())
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()

    def __enter__(self) -> ThreadedApp:
        self.thread.start()
        assert self._ready.wait(10), "the test server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def upstream_app() -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        if request.path.endswith("/fail"):
            return web.json_response({"ok": False}, status=503)
        return web.json_response({"ok": True, "path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


# -- the gateway --------------------------------------------------------------------------

REAL_CONFIG = """\
[gateway]
listen = "127.0.0.1:{port}"

[admin]
listen = "127.0.0.1:{admin_port}"
token = "{token}"

[upstreams.users]
targets = ["{upstream}"]

[upstreams.orders]
targets = ["{upstream}", "http://127.0.0.1:{dead_port}"]
breaker = {{ failures = 1, cooldown = "1m" }}
retries = 0

[plugins.prometheus]

[[routes]]
name = "users"
path = "/api/users"
upstream = "users"

[[routes]]
name = "orders"
path = "/api/orders"
upstream = "orders"

[[routes]]
name = "health"
path = "/health"
methods = ["GET"]
upstream = "{upstream}"
"""


@dataclass
class Dashboard:
    """Where the page is, and how to make traffic through the gateway."""

    url: str
    traffic: Callable[[str, int], None]  # (route, how many requests)
    upstream_names: list[str]


def get(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                    timeout=5) as answer:
            answer.read()
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[Dashboard]:
    """``pygate serve`` with ``[admin]`` in front of a loopback upstream."""
    yield from serve_dashboard(tmp_path)


def serve_dashboard(tmp_path: Path) -> Iterator[Dashboard]:
    with ThreadedApp(upstream_app()) as upstream:
        port, admin_port = free_port(), free_port()
        config = tmp_path / "pygate.toml"
        config.write_text(REAL_CONFIG.format(port=port, admin_port=admin_port, token=TOKEN,
                                             upstream=upstream.url, dead_port=free_port()))
        log = tmp_path / "serve.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYGATE_")}
        with log.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pygate", "serve", "-c", str(config)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        try:
            wait_for(lambda: proc.poll() is not None or get(
                f"http://127.0.0.1:{admin_port}/ready") == 200, 20, "the gateway to serve")
            assert proc.poll() is None, log.read_text()
            base = f"http://127.0.0.1:{port}"

            def traffic(route: str, count: int) -> None:
                path = {"users": "/api/users/1", "orders": "/api/orders/1",
                        "health": "/health"}[route]
                for i in range(count):
                    get(base + (path + "/fail" if route == "users" and i % 10 == 9 else path))

            yield Dashboard(f"http://127.0.0.1:{admin_port}", traffic,
                            upstream_names=["users", "orders"])
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


# ---------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------


def route_rows(driver: Any) -> list[str]:
    from selenium.webdriver.common.by import By

    return [row.get_attribute("data-route")
            for row in driver.find_elements(By.CSS_SELECTOR, "#routes tbody tr")]


def chart(driver: Any, route: str, kind: str) -> dict[str, str]:
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.CSS_SELECTOR,
                              f'.chart[data-route="{route}"][data-chart="{kind}"]')
    lines = box.find_elements(By.CSS_SELECTOR, "polyline")
    return {"value": box.find_element(By.CSS_SELECTOR, ".value").text,
            "points": " | ".join(line.get_attribute("points") for line in lines),
            "count": box.get_attribute("data-points") or "0"}


def rate_of(text: str) -> float:
    try:
        return float(text.removesuffix("/s"))
    except ValueError:
        return 0.0


def test_dashboard_lists_routes_and_charts_traffic(page: Any, dashboard: Dashboard,
                                                   tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser = page
    browser.get(f"{dashboard.url}/#token={TOKEN}")
    wait_for(lambda: set(ROUTES) <= set(route_rows(browser)), what="the route table")
    assert route_rows(browser)[:len(ROUTES)] == ROUTES
    assert "token" not in browser.current_url  # taken out of the address bar
    assert browser.find_element(By.ID, "login").get_attribute("hidden") is not None

    cards = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "article.upstream"),
                     what="the upstream cards")
    assert [c.get_attribute("data-upstream") for c in cards][:2] == dashboard.upstream_names
    badges = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "article.upstream .badge")]
    assert "healthy" in badges and "closed" in badges

    wait_for(lambda: int(chart(browser, "users", "rate")["count"]) >= 2, what="a first point")
    before = chart(browser, "users", "rate")
    assert rate_of(before["value"]) == 0
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:  # several polls see the counters move
        dashboard.traffic("users", 30)
        dashboard.traffic("orders", 5)
        time.sleep(0.2)
    moved = wait_for(lambda: (lambda c: c if rate_of(c["value"]) > 0 else None)(
        chart(browser, "users", "rate")), what="the users rate chart to move")
    assert moved["points"] != before["points"]
    latency = wait_for(lambda: (lambda c: c if "ms" in c["value"] else None)(
        chart(browser, "users", "latency")), what="the users latency chart")
    assert latency["points"]
    errors = chart(browser, "users", "errors")
    assert errors["value"].endswith("%") and errors["points"]

    screenshot = tmp_path / "dashboard.png"
    browser.save_screenshot(str(screenshot))
    target = os.environ.get("PYGATE_DASHBOARD_SCREENSHOT")
    if target:
        shutil.copyfile(screenshot, target)
    assert console_errors(browser) == []


def test_without_a_token_the_page_asks_for_it(page: Any, dashboard: Dashboard) -> None:
    from selenium.webdriver.common.by import By

    browser = page
    browser.get(f"{dashboard.url}/")
    form = wait_for(lambda: (lambda f: f if f.is_displayed() else None)(
        browser.find_element(By.ID, "login")), what="the token form")
    assert browser.find_element(By.ID, "board").get_attribute("hidden") is not None
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    form.find_element(By.CSS_SELECTOR, "button").click()
    wait_for(lambda: set(ROUTES) <= set(route_rows(browser)), what="the routes after login")
    assert not browser.find_element(By.ID, "login").is_displayed()
    # the only console errors: the browser's own lines for the API's 401 answers
    assert console_errors(browser, allow=lambda m: "401" in m) == []
