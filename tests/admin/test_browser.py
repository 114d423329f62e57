"""The admin UI in real headless Chromium (Debian's package driven by
Playwright): log in, filter, page, open a detail, export a CSV, an
auditor's tenant isolation, and a proof downloaded from the event page.
Screenshots go to test-artifacts/admin/."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from auditlake.collector.integrity.proofs import check_inclusion
from auditlake.collector.integrity.signing import KeyRing
from tests.admin.conftest import PASSWORD, Lake

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "admin"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not installed (apt-get install -y chromium)")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def shot(page: object, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def log_in(page: object, url: str, user: str) -> None:
    page.goto(url + "/")  # type: ignore[attr-defined]
    assert "/login" in page.url  # type: ignore[attr-defined]
    page.fill("#username", user)  # type: ignore[attr-defined]
    page.fill("#password", PASSWORD)  # type: ignore[attr-defined]
    page.click("form[action='/login'] button[type=submit]")  # type: ignore[attr-defined]
    page.wait_for_selector("#filters")  # type: ignore[attr-defined]


def column(page: object, n: int) -> list[str]:
    """Text of the n-th (1-based) cell of every result row."""
    return [c.strip() for c in page.locator(f"section.results tbody tr td:nth-child({n})").all_inner_texts()]  # type: ignore[attr-defined]


def test_admin_searches_pages_opens_a_detail_and_exports_csv(lake: Lake, browser: object, tmp_path: Path) -> None:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1366, "height": 900})  # type: ignore[attr-defined]
    page = context.new_page()
    try:
        page.goto(lake.url + "/")
        shot(page, "01-login")
        log_in(page, lake.url, "root")
        shot(page, "02-search")
        assert page.locator("svg.chart rect").count() > 0, "the activity chart has bars"

        # filter by tenant and two actions, with the keyboard-reachable form
        page.fill("input[name=tenant]", "acme")
        page.select_option("select[name=action]", ["update", "delete"])
        page.select_option("#range", "7d")
        page.click("#filters button[type=submit]")
        page.wait_for_load_state()
        assert "tenant=acme" in page.url and "action=update" in page.url and "action=delete" in page.url
        expected = {e["id"] for e in lake.sent(tenant_id="acme") if e["action"] in ("update", "delete")}
        assert set(column(page, 2)) == {"acme"}
        assert set(column(page, 4)) <= {"update", "delete"}
        shot(page, "03-filtered")

        # page: the second page continues strictly after the first
        first = page.locator("section.results tbody tr td:nth-child(1) a").evaluate_all(
            "els => els.map(e => e.getAttribute('href'))")
        page.click("#older")
        page.wait_for_load_state()
        second = page.locator("section.results tbody tr td:nth-child(1) a").evaluate_all(
            "els => els.map(e => e.getAttribute('href'))")
        assert len(first) == 50 and second and not set(first) & set(second)
        seen = {h.rsplit("/", 1)[1] for h in first + second}
        assert seen == expected, "two pages hold exactly the matching events"

        # a detail: every field and the before/after diff side by side
        update_id = next(e["id"] for e in lake.sent(tenant_id="acme", action="update"))
        page.goto(f"{lake.url}/events/{update_id}")
        assert page.locator("table.diff td.before").first.inner_text().strip() == "draft"
        assert page.locator("table.diff td.after").first.inner_text().startswith("final-")
        assert page.locator("table.fields").inner_text().count("chain_hash") == 1
        shot(page, "04-detail")
        page.click("text=Everything acme-user")
        page.wait_for_load_state()
        assert set(column(page, 3)) <= {next(e["user_id"] for e in lake.sent(id=update_id))}

        # export the filtered view as CSV and read it back
        page.goto(lake.url + "/?tenant=globex&action=update&range=7d")
        with page.expect_download() as info:
            page.click("a[data-export]:has-text('CSV')")
        target = tmp_path / "export.csv"
        info.value.save_as(str(target))
        page.wait_for_selector("text=Export done", timeout=15_000)
        shot(page, "05-exported")
        with open(target, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        assert {r["id"] for r in rows} == {e["id"] for e in lake.sent(tenant_id="globex", action="update")}
        assert {r["tenant_id"] for r in rows} == {"globex"}

        # integrity: an admin starts a verification; it covers the events now
        page.goto(lake.url + "/integrity")
        page.click("text=Verify now")
        for _ in range(60):
            page.goto(lake.url + "/integrity")
            if "0 events" not in page.inner_text("dl") and "Verified" in page.content():
                break
            page.wait_for_timeout(500)
        assert "no problem found" in page.inner_text("main")
        assert int(page.inner_text("dl").split("Summary")[1].split("events")[0].strip().replace(",", "")) >= 540
        assert page.locator("text=Integrity: verified").count() == 1
        shot(page, "06-integrity")
    finally:
        context.close()


def test_auditor_sees_only_their_tenant_in_the_browser(lake: Lake, browser: object) -> None:
    context = browser.new_context(viewport={"width": 1366, "height": 900})  # type: ignore[attr-defined]
    page = context.new_page()
    try:
        log_in(page, lake.url, "alice")
        options = page.locator("select[name=tenant] option").all_inner_texts()
        assert [o.strip() for o in options] == ["all granted", "acme"]
        page.select_option("#range", "all")
        page.click("#filters button[type=submit]")
        page.wait_for_load_state()
        assert set(column(page, 2)) == {"acme"}
        shot(page, "07-auditor")
        # asking for another tenant by URL: refused, with nothing about it shown
        resp = page.goto(lake.url + "/?tenant=globex")
        assert resp is not None and resp.status == 403
        assert "globex-user" not in page.content()
        shot(page, "08-auditor-denied")
        other = lake.sent(tenant_id="globex")[0]["id"]
        resp = page.goto(f"{lake.url}/events/{other}")
        assert resp is not None and resp.status == 404
        # free text only globex's events hold finds none of them (at most the
        # records of acme's own earlier searches for that text)
        page.goto(lake.url + "/?q=globex-secret-marker&range=all")
        assert set(column(page, 2)) <= {"acme"}
        assert all(r.startswith("audit_log") for r in column(page, 5))
    finally:
        context.close()


def test_an_auditor_downloads_a_proof_from_the_event_page_that_verifies(lake: Lake, browser: object,
                                                                          tmp_path: Path) -> None:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1366, "height": 900})  # type: ignore[attr-defined]
    page = context.new_page()
    try:
        log_in(page, lake.url, "alice")
        event = lake.sent(tenant_id="acme", action="delete")[0]
        page.goto(f"{lake.url}/events/{event['id']}")
        assert "auditlake proof verify" in page.inner_text("p.proof")
        shot(page, "09-event-proof")
        with page.expect_download() as info:
            page.click("#download-proof")
        assert info.value.suggested_filename == f"proof-{event['id']}.json"
        target = tmp_path / info.value.suggested_filename
        info.value.save_as(str(target))
        doc = json.loads(target.read_text())
        keys = KeyRing.parse((lake.collector.data / "keys" / "signing.pub.pem").read_text())
        check = check_inclusion(doc, keys)
        assert check.ok, check.summary
        assert dict(doc["event"])["id"] == event["id"] and dict(doc["event"])["tenant_id"] == "acme"
    finally:
        context.close()
