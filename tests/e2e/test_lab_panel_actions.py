"""What users and admins do from colab-guard's JupyterLab panel, in a real Chromium against a real
`jupyter lab`: appeal from "My incidents" after a reload (no notification left), read the
strike-limit refusal whole, be warned one strike before the limit, and, as an admin, resolve an
appeal and clear a user's strikes. Incidents are put in the database before the server starts,
as an earlier session would have left them.

In CI (CI=true) a missing browser is a failure; elsewhere the tests skip, saying why.
"""

from __future__ import annotations

import re

import pytest

from colab_guard.record.database import IncidentDatabase
from tests.e2e.test_lab_browser import (  # noqa: F401 - fixtures
    ARTIFACTS,
    MESSAGE,
    USER,
    browser_page,
    chromium,
    lab,
    pool,
    run_first_cell,
)
from tests.guard_users import enforced_incident

pytestmark = pytest.mark.integration

OTHER = "bob"
BOB_APPEAL = "It was the course's hashing benchmark, ask my teacher."
REPLY = "Confirmed with your teacher: the strike is removed."


def strike(user: str, category: str = "crypto-mining", name: str = "xmrig", pid: int = 4242):
    """An enforced incident (a strike) whose summary is 'category: name (pid N)'."""
    incident = enforced_incident(user, category=category)
    incident.evidence = {"processes": [{"pid": pid, "name": name,
                                        "cmdline": f"./{name} --threads 2"}]}
    return incident


def database_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'incidents.sqlite'}"


def record(tmp_path, *incidents, appeals=()):
    """Incidents (and appeals: (incident, user, text)) in the database the lab will open."""
    database = IncidentDatabase(database_url(tmp_path))
    for incident in incidents:
        assert database.save(incident)
    assert database.flush()
    for incident, user, text in appeals:
        database.appeal(incident.id, user, text)
    database.close()


def notebook(server, name: str = "work.ipynb") -> str:
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, server.root / name)
    return name


async def open_lab(page, server, path: str = "") -> None:
    await page.goto(f"{server.url}/lab{path}?token={server.token}")
    await page.locator(".jp-ColabGuard-status").wait_for(timeout=90_000)


async def open_admin_panel(page) -> None:
    """From the launcher, as an admin would: its "colab-guard Incidents" card."""
    card = page.locator(".jp-LauncherCard", has_text="colab-guard Incidents")
    if not await card.count():
        await page.get_by_title("New Launcher").first.click()
    await card.click(timeout=30_000)


async def test_one_strike_before_the_limit_warns_and_my_incidents_offers_an_appeal_after_a_reload(
        tmp_path, lab, chromium):
    from playwright.async_api import expect

    first = strike(USER)
    second = strike(USER, "torrenting", "rtorrent", 77)
    record(tmp_path, first, second)
    server = lab(strike_limit=3)
    ARTIFACTS.mkdir(exist_ok=True)
    async with browser_page(chromium) as page:
        await open_lab(page, server)
        # Warned at 2 of 3 strikes: the status bar and a notification.
        status = page.locator(".jp-ColabGuard-status")
        await expect(status).to_have_text(re.compile(r"Guard: on · \d+ · 2 of 3 strikes"),
                                          timeout=30_000)
        warning = page.locator(".Toastify__toast", has_text="2 of 3 strikes")
        await expect(warning).to_contain_text("One more and new kernels will be refused")
        await page.screenshot(path=str(ARTIFACTS / "strikes-warning.png"))

        # After a reload no incident notification is left: "My incidents" has the Appeal button.
        await page.reload()
        await page.locator(".jp-ColabGuard-status").wait_for(timeout=90_000)
        await page.locator(".jp-ColabGuard-status").click()
        mine = page.locator("#colab-guard-mine .jp-ColabGuard-panel")
        row = mine.locator(f"tr[data-incident-id='{first.id}']")
        await expect(row).to_be_visible(timeout=30_000)
        await expect(mine.locator(f"tr[data-incident-id='{second.id}'] "
                                  ".jp-ColabGuard-appeal-button")).to_be_visible()
        await page.screenshot(path=str(ARTIFACTS / "my-incidents-appeal.png"))
        await row.locator(".jp-ColabGuard-appeal-button").click()
        dialog = page.locator(".jp-Dialog")
        await expect(dialog.locator(".jp-ColabGuard-summary")).to_have_text(
            "crypto-mining: xmrig (pid 4242)")
        await expect(dialog.locator(".jp-ColabGuard-message")).to_have_text(MESSAGE)
        await dialog.locator("textarea").fill("A course exercise, not mining.")
        await page.screenshot(path=str(ARTIFACTS / "my-incidents-appeal-dialog.png"))
        await dialog.get_by_role("button", name="Appeal").click()
        await page.locator(".Toastify__toast", has_text="Your appeal was sent").wait_for(
            timeout=15_000)

        # Pending now: no second Appeal button for that incident.
        await expect(row).to_contain_text("appeal pending", timeout=15_000)
        assert await row.locator(".jp-ColabGuard-appeal-button").count() == 0
        incident = server.api(f"colab-guard/api/incidents/{first.id}")
        assert [(a["text"], a["status"]) for a in incident["appeals"]] == [
            ("A course exercise, not mining.", "pending")]


async def test_at_the_strike_limit_the_kernel_start_refusal_is_readable_whole(
        tmp_path, lab, chromium):
    from playwright.async_api import expect

    record(tmp_path, strike(USER), strike(USER, "torrenting", "rtorrent", 77))
    server = lab(strike_limit=2)
    name = notebook(server)
    async with browser_page(chromium) as page:
        await open_lab(page, server, f"/tree/{name}")
        dialog = page.locator(".jp-Dialog", has_text="Error Starting Kernel")
        await dialog.wait_for(timeout=90_000)
        reason = dialog.locator(".jp-Dialog-body pre").first
        await expect(reason).to_contain_text(MESSAGE)
        await expect(reason).to_contain_text("New kernels are refused: 2 strikes "
                                             "(crypto-mining, torrenting)")
        await expect(reason).to_contain_text("You can appeal an incident")
        # Read whole: the text wraps inside the dialog instead of running off its edge.
        box = await reason.bounding_box()
        body = await dialog.locator(".jp-Dialog-content").bounding_box()
        scroll_width, client_width = await reason.evaluate("n => [n.scrollWidth, n.clientWidth]")
        assert scroll_width <= client_width + 1, (scroll_width, client_width)
        assert box["x"] + box["width"] <= body["x"] + body["width"] + 1
        assert box["height"] > 30  # several lines
        await page.screenshot(path=str(ARTIFACTS / "strike-limit-dialog.png"))
        await dialog.get_by_role("button", name="Ok").click()
        # And the guard says so itself, with where to appeal.
        notice = page.locator(".Toastify__toast", has_text="2 of 2 strikes: new kernels are refused")
        await expect(notice).to_be_visible(timeout=30_000)
        await expect(notice.get_by_role("button", name="My incidents")).to_be_visible()
        await expect(page.locator(".jp-ColabGuard-status")).to_contain_text("2 of 2 strikes")
        await page.screenshot(path=str(ARTIFACTS / "strike-limit-notice.png"))


async def test_an_admin_resolves_an_appeal_and_clears_strikes_from_the_panel(
        tmp_path, lab, chromium):
    from playwright.async_api import expect

    appealed = strike(OTHER, name="hashbench", pid=5151)
    other = strike(OTHER, "torrenting", "aria2c", 99)
    record(tmp_path, appealed, other, appeals=[(appealed, OTHER, BOB_APPEAL)])
    server = lab()  # alice is the admin (GuardAuthorizer.admin_users)
    async with browser_page(chromium) as page:
        await open_lab(page, server)
        await open_admin_panel(page)
        panel = page.locator("#colab-guard-all .jp-ColabGuard-panel")
        pending = panel.locator(".jp-ColabGuard-pending-appeals tbody tr")
        await expect(pending).to_have_count(1, timeout=30_000)
        await expect(pending).to_contain_text(BOB_APPEAL)
        await expect(pending).to_contain_text("crypto-mining: hashbench (pid 5151)")
        strikes = panel.locator(f".jp-ColabGuard-strikes tr[data-strikes-user='{OTHER}']")
        await expect(strikes).to_contain_text("2 of 3")
        await page.screenshot(path=str(ARTIFACTS / "admin-panel-actions.png"))

        # Accept with a reply: the appeal is answered, its strike removed.
        await pending.get_by_role("button", name="Accept…").click()
        dialog = page.locator(".jp-Dialog")
        await expect(dialog).to_contain_text(BOB_APPEAL)
        await dialog.locator("textarea").fill(REPLY)
        await page.screenshot(path=str(ARTIFACTS / "admin-accept-dialog.png"))
        await dialog.get_by_role("button", name="Accept", exact=True).click()
        await page.locator(".Toastify__toast", has_text="The appeal was accepted").wait_for(
            timeout=15_000)
        await expect(panel.locator(".jp-ColabGuard-pending-appeals")).to_have_count(0)
        await expect(strikes).to_contain_text("1 of 3")
        appeal = server.api(f"colab-guard/api/incidents/{appealed.id}")["appeals"][0]
        assert (appeal["status"], appeal["reply"]) == ("accepted", REPLY)

        # Clear the strike left.
        await strikes.get_by_role("button", name="Clear strikes…").click()
        dialog = page.locator(".jp-Dialog")
        await expect(dialog).to_contain_text(f"Clear the 1 strike in force against {OTHER}?")
        await dialog.get_by_role("button", name="Clear strikes").click()
        await page.locator(".Toastify__toast", has_text=f"1 strike of {OTHER} cleared").wait_for(
            timeout=15_000)
        await expect(panel.locator(".jp-ColabGuard-strikes")).to_have_count(0)
        await expect(panel).to_contain_text("No strikes in force.")
        assert server.api(f"colab-guard/api/strikes?user={OTHER}")["strikes"] == []
        await page.screenshot(path=str(ARTIFACTS / "admin-panel-after.png"))


async def test_a_refused_cell_is_notified_with_details_appeal_and_count(tmp_path, lab, chromium):
    import nbformat
    from playwright.async_api import expect

    server = lab()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "!./xmrig -o stratum+tcp://127.0.0.1:3333 -u wallet")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, server.root / "refused.ipynb")
    async with browser_page(chromium) as page:
        await page.goto(f"{server.url}/lab/tree/refused.ipynb?token={server.token}")
        await page.locator(".jp-StatusBar-Widget", has_text="Python 3 (ipykernel) | Idle").wait_for(
            timeout=90_000)
        await run_first_cell(page)
        toast = page.locator(".Toastify__toast", has_text="Cell not run: crypto-mining")
        await toast.wait_for(timeout=30_000)
        await expect(page.locator(".jp-ColabGuard-status")).to_have_text(
            re.compile(r"Guard: on · [1-9]"))
        await toast.get_by_role("button", name="Details").click()
        dialog = page.locator(".jp-Dialog")
        await expect(dialog.locator(".jp-ColabGuard-done")).to_contain_text("refuse")
        await dialog.locator("textarea").fill("I was testing the guard.")
        await dialog.get_by_role("button", name="Appeal").click()
        await page.locator(".Toastify__toast", has_text="Your appeal was sent").wait_for(
            timeout=15_000)
        await page.screenshot(path=str(ARTIFACTS / "refused-cell.png"))
