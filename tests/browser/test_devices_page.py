"""Issue 7's page (/devices): a member pairs a device, retires one, and finds the exports."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_devices_page_pairs_retires_and_offers_exports(node_factory, page, tmp_path):
    ada = node_factory.start(name="Ada")
    cid = ada.api("POST", "/api/congregations", {"name": "Riverside", "purpose": ""}, expect=201)[1]["id"]
    crew = ada.api("POST", f"/api/congregations/{cid}/crews", {"name": "Garden", "purpose": ""}, expect=201)[1]["id"]
    page.goto(ada.url)                                   # the token becomes the session cookie
    page.goto(f"{ada.base}/devices")
    assert page.locator("h1").inner_text() == "Devices, bundles and backups"
    assert page.locator("tbody tr").count() == 1         # only this device

    page.fill("input[name=label]", "phone")
    page.click("text=Make a pairing code")
    code = page.locator("pre code").inner_text().split()[3]
    joined = subprocess.run([sys.executable, "-m", "node.cli", "device", "join", code, "--home", str(tmp_path / "phone")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert joined.returncode == 0, joined.stderr

    page.goto(f"{ada.base}/devices")
    assert page.locator("tbody tr").count() == 2
    page.screenshot(path=str(tmp_path / "devices.png"), full_page=True)
    # retiring is for good: it asks for a ticked box first (the page, and the node without it)
    page.click("text=Retire this device")
    assert "retired" not in page.locator("tbody tr").nth(1).inner_text()
    page.evaluate("document.querySelector('input[name=confirm]').required = false")
    page.click("text=Retire this device")
    assert "tick “I want to retire it, for good”" in page.get_by_role("alert").inner_text()
    assert "retired" not in page.locator("tbody tr").nth(1).inner_text()
    page.get_by_label("I want to retire it, for good").check()
    page.click("text=Retire this device")
    assert "The device is retired" in page.locator("[role=status]").first.inner_text()
    assert "retired" in page.locator("tbody tr").nth(1).inner_text()

    links = page.locator("a[download]")
    hrefs = {links.nth(i).get_attribute("href") for i in range(links.count())}
    assert f"/api/congregations/{cid}/export?download=1" in hrefs
    assert f"/api/crews/{crew}/calendar.ics" in hrefs
    with page.expect_download() as download:
        page.click("text=Riverside (JSON)")
    assert download.value.suggested_filename.endswith(".json")
