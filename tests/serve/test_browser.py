"""The page in a real browser: a `histodetect serve` process on 127.0.0.1, headless Chromium
(Debian's chromium + chromium-driver, driven by Selenium) uploading real PCam patches through
the file input; the probabilities it shows must be the CLI's. Saves a screenshot."""

from __future__ import annotations

import csv
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from histodetect.cli.main import main
from serve_process import wait_for_url

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1200,2600",
)  # fmt: skip

pytestmark = [
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
        "chromium-driver; .ci/run installs them)",
    ),
]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """A real `histodetect serve` on a free port of 127.0.0.1; yields its URL."""
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "histodetect", "serve", "--port", "0", "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=log, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        yield wait_for_url(process, tmp_path / "serve.log")
    finally:
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        stdout, _ = process.communicate(timeout=30)
        log.close()
    assert process.returncode == 0, (tmp_path / "serve.log").read_text()
    assert stdout.strip().endswith("Stopped.")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (dev extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _cli_probabilities(paths: list[Path], out: Path) -> dict[str, float]:
    assert (
        main(["predict", *map(str, paths), "--out", str(out), "--no-progress", "--device", "cpu"])
        == 0
    )
    with out.open() as f:
        return {row["id"]: float(row["label"]) for row in csv.DictReader(f)}


def _rows(driver: Any) -> list[dict[str, str]]:
    script = """return Array.from(document.querySelectorAll('#results tbody tr')).map(r => ({
        id: r.querySelector('.id').textContent, state: r.dataset.state,
        shown: (r.querySelector('.probability') || {}).textContent || '',
        text: r.textContent, overlays: r.querySelectorAll('.overlay img').length}))"""
    rows: list[dict[str, str]] = driver.execute_script(script)
    return rows


def test_the_page_shows_the_cli_probabilities(
    server: str, browser: Any, valid_patches: list[Path], shared_data: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    patches = valid_patches[:3] + valid_patches[-3:]
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is not an image")
    browser.get(server)
    wait = WebDriverWait(browser, 180, poll_frequency=0.2)  # generous: CI may be loaded
    wait.until(lambda d: d.find_element(By.ID, "model-line").text.startswith("Model "))
    browser.find_element(By.ID, "files").send_keys(
        "\n".join(str(p) for p in [*patches, not_an_image])
    )
    wait.until(lambda d: len(_rows(d)) == 7 and all(r["state"] != "pending" for r in _rows(d)))
    wait.until(lambda d: sum(r["overlays"] for r in _rows(d)) == len(patches))  # Grad-CAM shown
    rows = {row["id"]: row for row in _rows(browser)}
    expected = _cli_probabilities(patches, tmp_path / "cli.csv")
    for patch_id, probability in expected.items():
        assert rows[patch_id]["state"] == "done"
        assert rows[patch_id]["shown"] == f"{probability:.6f}"  # the CSV's 6 decimals, exactly
    failed = rows["notes"]
    assert (
        failed["state"] == "failed"
        and "notes.png is not a PNG, JPEG or TIFF image" in failed["text"]
    )
    _analyse_a_slide(browser, wait, shared_data, tmp_path)
    screenshot = tmp_path / "serve-page.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    assert not browser.find_element(By.ID, "slide-name-label").is_displayed()  # no --slides-dir
    browser.find_element(By.CSS_SELECTOR, "#model-card summary").click()
    assert "threshold" in browser.find_element(By.ID, "model-card-body").text
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(screenshot, ARTIFACTS / screenshot.name)


def _analyse_a_slide(browser: Any, wait: Any, shared_data: Path, tmp_path: Path) -> None:
    """Upload the layout slide (real PCam patches, a tumour block) and wait for its heatmap."""
    from selenium.webdriver.common.by import By

    from slidefiles import LEVEL0_MPP, canvas, write_pyramid

    image, _ = canvas(shared_data)
    slide = write_pyramid(tmp_path / "layout.tif", image.repeat(2, 0).repeat(2, 1), LEVEL0_MPP)
    browser.find_element(By.ID, "slide-file").send_keys(str(slide))
    browser.find_element(By.CSS_SELECTOR, "#slide-form button").click()
    shown = "return document.getElementById('slide-overlay').naturalWidth"
    wait.until(lambda d: d.find_element(By.ID, "slide-result").is_displayed())
    wait.until(lambda d: d.execute_script(shown) > 0)
    assert browser.find_element(By.ID, "slide-progress").get_attribute("value") == "1"
    summary = browser.find_element(By.ID, "slide-summary").text
    assert summary.startswith("Max probability") and "regions" in summary
    links = browser.find_elements(By.CSS_SELECTOR, "#slide-links a")
    assert [a.text for a in links] == ["heatmap", "regions", "summary", "report", "tiles"]
