"""The operator's console (gateway/console) on the admin listener, against real Redis and
PostgreSQL with the history writer, and real callbacks over HTTP.

Plain HTTP: nothing without the session cookie; the cookie's attributes; a POST without the
CSRF token changes nothing; the cookie opens no API route, the token no console page.
In headless Chromium (Playwright, the system's /usr/bin/chromium): log in, the overview's
numbers move by themselves, resolve an incident, find a player and adjust the balance with a
confirmation, the GGR report's totals and CSV against a direct SQL sum. Screenshots of every
page land in docs/console/.
"""

import asyncio
import csv
import io
import os
import re
import shutil
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request
from conftest import ADMIN_TOKEN, Admin, Provider
from payloads import bet, close_round, rollback, win

from gateway.app import Services, create_admin_app
from gateway.console import app as console_app
from gateway.console.auth import LOGIN_COOKIE, SESSION_COOKIE, set_cookie
from gateway.settings import Settings
from persistence.reports import units

pytest_plugins = ("history_fixtures",)

Drain = Callable[[], Awaitable[None]]
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
# The browser test's screenshots; the README shows docs/console/, refreshed with
# CONSOLE_SCREENSHOTS_DIR=docs/console pytest tests/test_console.py -k browser
# (a plain run leaves the repository as it was).
SCREENSHOTS = Path(
    os.environ.get("CONSOLE_SCREENSHOTS_DIR")
    or Path(tempfile.gettempdir()) / "wallet-gateway-console-screenshots"
)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's package
# this machine's closed network: no background fetches, no QUIC
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
VIEWPORT = {"width": 1280, "height": 800}
BROWSER_WAIT_MS = 15_000
DAY = timedelta(days=1)


@pytest.fixture
def settings(settings: Settings, database_url: str) -> Settings:
    return settings.replace(database_url=database_url)


@pytest.fixture
async def console(services: Services, aiohttp_client: Any) -> TestClient:
    """The admin listener's app, with a client of its own (its own cookie jar)."""
    return await aiohttp_client(create_admin_app(services))


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, html
    return found.group(1)


async def log_in(client: TestClient, token: str = ADMIN_TOKEN) -> Any:
    form = await client.get("/console/login")
    assert form.status == 200
    return await client.post(
        "/console/login",
        data={"csrf": csrf_of(await form.text()), "operator": "ops-anna", "token": token},
        allow_redirects=False,
    )


async def double_win(admin: Admin, provider: Provider, user_id: str = "alice") -> None:
    """A bet, its win, and a second win of the same bet: a DOUBLE_WIN incident (409)."""
    session = await admin.open_session(user_id)
    assert (await provider.post("/withdraw", bet(user_id, session, "dw-b")))[0] == 200
    assert (await provider.post("/deposit", win(user_id, "dw-w1", "dw-b")))[0] == 200
    assert (await provider.post("/deposit", win(user_id, "dw-w2", "dw-b")))[0] == 409


# --- plain HTTP ------------------------------------------------------------------------------


async def test_every_page_redirects_to_the_login_without_a_session(console: TestClient) -> None:
    for path in ("/console/", "/console/incidents", "/console/players/alice",
                 "/console/reports/ggr.csv", "/console/rounds"):  # fmt: skip
        response = await console.get(path, allow_redirects=False)
        assert response.status == 303, path
        assert response.headers["Location"].startswith("/console/login?next=")
    refused = await console.post("/console/incidents/1/resolve", data={"note": "x"})
    assert refused.status == 403


async def test_the_login_sets_a_strict_http_only_cookie(console: TestClient) -> None:
    form = await console.get("/console/login")
    login_cookie = form.cookies[LOGIN_COOKIE]  # the login form's double-submit token
    assert (login_cookie["httponly"], login_cookie["samesite"]) == (True, "Strict")
    response = await log_in(console)
    assert response.status == 303
    assert response.headers["Location"] == "/console/"
    cookie = response.cookies[SESSION_COOKIE]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/console"
    # served over plain http (loopback): a Secure cookie would never come back (auth.py)
    assert not cookie["secure"]
    page = await console.get("/console")  # to /console/
    assert page.status == 200
    assert "Live overview" in await page.text()
    assert (await console.get("/console/nope")).status == 404
    assert (await console.delete("/console/incidents")).status == 403  # no CSRF token
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]


def test_over_https_the_cookie_is_secure_too() -> None:
    """Behind TLS (a request that came over https) the browser gets a Secure cookie."""
    request = make_mocked_request("POST", "/console/login", sslcontext=ssl.create_default_context())
    assert request.secure
    response = web.Response()
    set_cookie(request, response, SESSION_COOKIE, "id", 60)
    cookie = response.cookies[SESSION_COOKIE]
    assert (cookie["secure"], cookie["httponly"], cookie["samesite"]) == (True, True, "Strict")


async def test_a_wrong_token_or_a_forged_login_form_is_refused(console: TestClient) -> None:
    response = await log_in(console, "not-the-token")
    assert response.status == 401
    assert SESSION_COOKIE not in response.cookies
    assert "Wrong token" in await response.text()
    forged = await console.post(
        "/console/login",
        data={"csrf": "guessed", "operator": "x", "token": ADMIN_TOKEN},
        allow_redirects=False,
    )
    assert forged.status == 403
    assert SESSION_COOKIE not in forged.cookies
    assert (await console.get("/console/", allow_redirects=False)).status == 303


async def test_a_post_without_the_csrf_token_changes_nothing(
    console: TestClient, admin: Admin, provider: Provider, drain: Drain, database: Any
) -> None:
    await admin.create_player("alice", 10_000)
    await double_win(admin, provider)
    await drain()
    incident_id = await database.fetchval("SELECT id FROM incidents")
    assert (await log_in(console)).status == 303
    forms = [
        (f"/console/incidents/{incident_id}/resolve", {"note": "done"}),
        (
            "/console/players/alice/adjustments",
            {"amount": "5", "reference": "r1", "reason": "x", "confirmed": "yes"},
        ),
        ("/console/logout", {}),
    ]
    for path, fields in forms:
        for token in ({}, {"csrf": "wrong"}):
            response = await console.post(path, data={**fields, **token}, allow_redirects=False)
            assert response.status == 403, path
    assert await database.fetchval("SELECT resolved_at FROM incidents") is None
    assert await admin.balance("alice") == 10_000 - 1_000 + 2_000
    assert (await console.get("/console/", allow_redirects=False)).status == 200  # still in


async def test_the_cookie_opens_no_api_route_and_logout_revokes_it(console: TestClient) -> None:
    response = await log_in(console)
    session_id = response.cookies[SESSION_COOKIE].value
    # Path=/console keeps the browser from sending it elsewhere; sent anyway, it opens nothing
    api = await console.get(
        "/admin/incidents", headers={"Cookie": f"{SESSION_COOKIE}={session_id}"}
    )
    assert api.status == 401
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    page = await console.get("/console/", headers=bearer)
    assert page.status == 200
    session_cookie = console.session.cookie_jar.filter_cookies(console.make_url("/console/"))
    logout = await console.post(
        "/console/logout", data={"csrf": csrf_of(await page.text())}, allow_redirects=False
    )
    assert logout.status == 303
    # the old cookie, sent again by hand, is no session any more (Redis forgot it)
    console.session.cookie_jar.update_cookies(session_cookie, console.make_url("/console/"))
    assert (await console.get("/console/", allow_redirects=False)).status == 303
    # and the token alone opens no page of the console
    console.session.cookie_jar.clear()
    assert (await console.get("/console/", headers=bearer, allow_redirects=False)).status == 303


async def test_a_login_goes_back_only_to_a_page_of_the_console(console: TestClient) -> None:
    for asked, landing in (
        ("/console/players?q=a", "/console/players?q=a"),
        ("//evil.example/console/", "/console/"),
        ("https://evil.example/", "/console/"),
    ):
        form = await console.get("/console/login", params={"next": asked})
        response = await console.post(
            "/console/login",
            data={
                "csrf": csrf_of(await form.text()),
                "operator": "ops-anna",
                "token": ADMIN_TOKEN,
                "next": asked,
            },
            allow_redirects=False,
        )
        assert response.headers["Location"] == landing


async def test_resolving_needs_a_note_and_an_adjustment_moves_money_once_per_reference(
    console: TestClient, admin: Admin, provider: Provider, drain: Drain, database: Any
) -> None:
    await admin.create_player("alice", 10_000)
    await double_win(admin, provider)
    await drain()
    incident_id = await database.fetchval("SELECT id FROM incidents")
    await log_in(console)
    csrf = csrf_of(await (await console.get("/console/")).text())
    blank = await console.post(
        f"/console/incidents/{incident_id}/resolve", data={"csrf": csrf, "note": ""}
    )
    assert blank.status == 400
    assert "Not resolved" in await blank.text()
    assert await database.fetchval("SELECT resolved_at FROM incidents") is None
    balance = await admin.balance("alice")
    adjustment = {"csrf": csrf, "amount": "-1.25", "reference": "cash-9", "reason": "fee"}
    review = await console.post("/console/players/alice/adjustments", data=adjustment)
    assert review.status == 200
    assert 'id="confirm-amount">-1.250<' in await review.text()
    assert await admin.balance("alice") == balance  # nothing moves before the confirmation
    for _ in range(2):  # a second confirmation (a reload, a double click) moves nothing more
        done = await console.post(
            "/console/players/alice/adjustments",
            data={**adjustment, "confirmed": "yes"},
            allow_redirects=False,
        )
        assert done.status == 303
        assert "outcome=OK" in done.headers["Location"]
    assert await admin.balance("alice") == balance - 1_250
    await drain()  # the reason is kept with the adjustment, in the history
    assert await database.fetch("SELECT amount, reason FROM adjustments") == [(-1_250, "fee")]
    assert (await console.get("/console/players/nobody")).status == 404
    wrong = await console.post(
        "/console/players/alice/adjustments", data={**adjustment, "amount": "1.0001"}
    )
    assert "at most three decimals" in await wrong.text()


async def test_an_incident_not_written_yet_is_shown_and_resolvable_once_written(
    console: TestClient, admin: Admin, provider: Provider, drain: Drain
) -> None:
    await admin.create_player("alice", 10_000)
    await double_win(admin, provider)
    await log_in(console)
    page = await (await console.get("/console/incidents")).text()
    assert 'id="unwritten"' in page and "DOUBLE_WIN dw-w2" in page
    assert "/resolve" not in page  # no id yet: nothing to resolve
    await drain()
    page = await (await console.get("/console/incidents?kind=DOUBLE_WIN")).text()
    assert 'id="unwritten"' not in page and "/resolve" in page
    listed = await (await console.get("/console/players")).text()  # no query: the first ones
    assert "/console/players/alice" in listed


async def test_players_are_paged_and_a_text_no_store_holds_is_refused(
    console: TestClient, admin: Admin, drain: Drain, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console_app, "PLAYERS_SHOWN", 2)
    for user_id in ("p1", "p2", "p3"):
        await admin.create_player(user_id)
    await drain()
    await log_in(console)
    first = await (await console.get("/console/players", params={"q": "p"})).text()
    assert "/console/players/p2" in first and "/console/players/p3" not in first
    assert 'href="/console/players?q=p&amp;after=p2"' in first
    rest = await (await console.get("/console/players", params={"q": "p", "after": "p2"})).text()
    assert "/console/players/p3" in rest and 'id="next-players"' not in rest
    assert (await console.get("/console/players", params={"q": "p\x00"})).status == 400


async def test_the_round_page_and_the_csv_download(
    console: TestClient, admin: Admin, provider: Provider, drain: Drain
) -> None:
    await admin.create_player("alice", 10_000)
    session = await admin.open_session("alice")
    assert (await provider.post("/withdraw", bet("alice", session, "b1", round_id="R1")))[0] == 200
    assert (await provider.post("/deposit", close_round("R1", [1_000], [0])))[0] == 200
    await drain()
    await log_in(console)
    round_page = await (await console.get("/console/rounds/R1")).text()
    assert 'id="round-result">match<' in round_page
    assert (await console.get("/console/rounds/nope")).status == 404
    today = datetime.now(UTC).date().isoformat()
    download = await console.get("/console/reports/ggr.csv", params={"from": today, "to": today})
    assert download.headers["Content-Disposition"] == (
        f'attachment; filename="ggr-{today}-{today}.csv"'
    )
    [row] = list(csv.DictReader(io.StringIO(await download.text())))
    assert (row["currency"], row["stakes"], row["ggr"]) == ("USD", "1000", "1000")
    bad = await console.get("/console/reports/ggr", params={"from": today, "to": "2000-01-01"})
    assert bad.status == 400


async def test_without_a_history_the_console_says_so(
    services: Services, aiohttp_client: Any
) -> None:
    """DATABASE_URL unset: the overview works; the pages of the history say what is missing."""
    services.history_pool = None
    client = await aiohttp_client(create_admin_app(services))
    await log_in(client)
    overview = await (await client.get("/console/")).text()
    assert 'id="postgres-state">' in overview and "not configured" in overview
    for path in ("/console/incidents", "/console/rounds", "/console/reports/ggr"):
        assert "runs without DATABASE_URL" in await (await client.get(path)).text()


# --- in the browser ----------------------------------------------------------------------------


async def play(admin: Admin, provider: Provider) -> None:
    """Bets, wins, a rollback, a DOUBLE_WIN, a round that matches its close and one that does
    not, a second player in another currency."""
    await admin.create_player("alice", 100_000)
    await admin.create_player("bob", 50_000, currency="EUR")
    alice, bob = await admin.open_session("alice"), await admin.open_session("bob")
    calls = [
        ("/withdraw", bet("alice", alice, "b1", 1_000)),
        ("/deposit", win("alice", "w1", "b1", 2_500)),
        ("/withdraw", bet("alice", alice, "b2", 3_000)),
        ("/deposit", rollback("alice", "rb2", "b2")),
        ("/withdraw", bet("alice", alice, "m1", 1_000, round_id="R-match")),
        ("/deposit", win("alice", "mw1", "m1", 2_000, round_id="R-match")),
        ("/deposit", close_round("R-match", [1_000], [2])),
        ("/withdraw", bet("alice", alice, "x1", 1_000, round_id="R-miss")),
        ("/deposit", close_round("R-miss", [1_000], ["1.5"])),  # we paid nothing: mismatch
        ("/withdraw", bet("bob", bob, "e1", 4_000, currency="EUR")),
    ]
    for path, payload in calls:
        assert (await provider.post(path, payload))[0] == 200, payload
    await double_win(admin, provider)


async def more_bets(admin: Admin, provider: Provider, count: int) -> None:
    session = await admin.open_session("bob")
    for n in range(count):
        payload = bet("bob", session, f"more-{n}", 100, currency="EUR")
        assert (await provider.post("/withdraw", payload))[0] == 200


async def direct_ggr(database: asyncpg.Connection, currency: str) -> int:
    """Today's GGR of one currency as a direct SQL sum over the history, computed as
    tests/test_reports.py does (requested amounts, refunded bets' stakes), not as the report."""
    from test_reports import DIRECT_SUMS

    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    rows = await database.fetch(DIRECT_SUMS, today, today + DAY)
    return int(
        sum(r["stakes"] - r["wins"] - r["refunds"] for r in rows if r["currency"] == currency)
    )


async def shot(page: Any, name: str) -> None:
    await asyncio.to_thread(SCREENSHOTS.mkdir, parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


# A laptop without Debian's chromium skips the browser; CI (.ci/run) installs it and says the
# browser is required, so there it fails rather than skips.
BROWSER_REQUIRED = os.environ.get("WALLET_GATEWAY_REQUIRE_BROWSER") == "1"


@pytest.mark.slow
@pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not BROWSER_REQUIRED,
    reason="no chromium (.ci/run installs it)",
)
async def test_the_console_in_a_browser(
    services: Services,
    admin: Admin,
    provider: Provider,
    drain: Drain,
    database: asyncpg.Connection,
    aiohttp_server: Any,
) -> None:
    from playwright.async_api import async_playwright, expect

    server = await aiohttp_server(create_admin_app(services))
    base = f"http://{server.host}:{server.port}/console"
    await play(admin, provider)
    await drain()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport=VIEWPORT)
            page = await context.new_page()
            page.set_default_timeout(BROWSER_WAIT_MS)
            expect.set_options(timeout=BROWSER_WAIT_MS)

            # login: without a cookie the console sends to the login; a wrong token is refused
            await page.goto(f"{base}/incidents")
            assert page.url.startswith(f"{base}/login?next=")
            await page.fill("input[name=operator]", "ops-anna")
            await page.fill("input[name=token]", "wrong")
            await page.click("button[type=submit]")
            await expect(page.locator("#login-error")).to_have_text("Wrong token.")
            await shot(page, "login")
            await page.fill("input[name=operator]", "ops-anna")
            await page.fill("input[name=token]", ADMIN_TOKEN)
            await page.click("button[type=submit]")
            await expect(page.locator("h1")).to_contain_text("Open incidents")  # where it was

            # overview: the numbers move by themselves (meta refresh) after more traffic
            await page.goto(f"{base}/")
            total = page.locator("#callbacks-total")
            before = int(await total.inner_text())
            assert before >= 12
            await expect(page.locator("#redis-state")).to_have_text("up")
            await expect(page.locator("#postgres-state")).to_have_text("up")
            await more_bets(admin, provider, 5)
            await expect(total).to_have_text(str(before + 5))
            await expect(page.locator("#callbacks-rate")).to_contain_text("/s over the last")
            await expect(page.locator("#conflicts")).to_contain_text("DOUBLE_WIN")
            await shot(page, "overview")

            # incidents: the call and the recorded bet side by side; resolve with a note
            incident_id = await database.fetchval(
                "SELECT id FROM incidents WHERE kind = 'DOUBLE_WIN'"
            )
            await page.goto(f"{base}/incidents")
            await page.select_option("select[name=kind]", "DOUBLE_WIN")
            await page.click("form.filter button")
            incident = page.locator(f"#incident-{incident_id}")
            await expect(incident.locator("pre.request")).to_contain_text('"dw-w2"')
            await expect(incident.locator("pre.recorded")).to_contain_text('"dw-b"')
            assert await page.locator("article.incident").count() == 1  # filtered by kind
            await shot(page, "incidents")
            await incident.locator("textarea[name=note]").fill("paid once, ticket 77")
            await incident.locator("button").click()
            await expect(page.locator("#resolved-notice")).to_contain_text(str(incident_id))
            await expect(page.locator(f"#incident-{incident_id}")).to_have_count(0)
            resolution = await database.fetchrow(
                "SELECT resolution_note, resolved_by FROM incidents WHERE id = $1", incident_id
            )
            assert tuple(resolution) == ("paid once, ticket 77", "ops-anna")

            # rounds: the mismatch first
            await page.goto(f"{base}/rounds")
            rows = page.locator("#rounds tbody tr")
            await expect(rows.first).to_contain_text("R-miss")
            await expect(rows.first).to_contain_text("mismatch")
            await expect(page.locator("#rounds")).to_contain_text("R-match")
            await shot(page, "rounds")
            await page.click("#rounds a:text-is('R-miss')")
            await expect(page.locator("#round-result")).to_have_text("mismatch")
            await shot(page, "round")

            # players: search, balance, transactions; an adjustment confirmed before it moves
            balance = (await services.wallet.get_player("alice")).balance_millis
            await page.goto(f"{base}/players")
            await page.fill("input[name=q]", "ali")
            await page.click("form.filter button")
            await page.click("#players a:text-is('alice')")
            await expect(page.locator("#balance")).to_have_text(f"{units(balance)} USD")
            await expect(page.locator("#transactions")).to_contain_text("rb2")
            await page.fill("#adjust-form input[name=amount]", "25.5")
            await page.fill("#adjust-form input[name=reason]", "goodwill, ticket 78")
            await page.click("#adjust-form button")
            await expect(page.locator("#confirm-amount")).to_have_text("25.500")
            await expect(page.locator("#confirm-after")).to_have_text(units(balance + 25_500))
            assert (await services.wallet.get_player("alice")).balance_millis == balance
            await shot(page, "adjustment")
            await page.click("#confirm-button")
            await expect(page.locator("#adjusted-notice")).to_contain_text(": OK.")
            assert (await services.wallet.get_player("alice")).balance_millis == balance + 25_500
            await drain()
            await page.reload()
            await expect(page.locator("#adjustments")).to_contain_text("goodwill, ticket 78")
            await shot(page, "player")

            # the GGR report: table and CSV against a direct sum over the history
            await page.goto(f"{base}/reports/ggr")
            for currency in ("USD", "EUR"):
                expected = await direct_ggr(database, currency)
                cell = page.locator(f"#ggr-totals tr[data-currency={currency}] td.ggr")
                await expect(cell).to_have_text(units(expected))
            await expect(page.locator("svg.chart")).to_have_count(2)
            await shot(page, "ggr")
            async with page.expect_download() as downloading:
                await page.click("#csv-download")
            download = await downloading.value
            csv_text = (await download.path()).read_text()
            rows_csv = list(csv.DictReader(io.StringIO(csv_text)))
            for currency in ("USD", "EUR"):
                assert sum(int(r["ggr"]) for r in rows_csv if r["currency"] == currency) == (
                    await direct_ggr(database, currency)
                )
        finally:
            await browser.close()
