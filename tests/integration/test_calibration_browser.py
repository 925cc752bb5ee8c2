"""The labelling page in a real browser: label by key, download labels.csv, fit and plot it.

Drives Debian's chromium (/usr/bin/chromium) with Playwright; skips, saying why, where either is
missing (CI installs chromium in .ci/run, and playwright comes with the dev extra)."""

from __future__ import annotations

import shutil

from pbi_assets.partitions import PROJECT
from pbi_ml.calibration import sample_for_labelling
from pbi_ml.storage import Storage
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, sync_playwright_or_skip


def test_label_by_key_download_and_fit(request, tmp_path, capsys):
    sync_playwright = sync_playwright_or_skip()
    from PIL import Image

    from pbi_assets.cli import main

    root, *_ = request.getfixturevalue("demo_run")  # after the skips: only a browser test pays for the run
    out = sample_for_labelling(PROJECT, Storage(root), tmp_path / "calib", n=8, seed=0)
    original = (out / "labels.csv").read_text().splitlines()
    n = len(original) - 1
    assert n >= 4 and original[0].endswith(",label")

    downloaded = tmp_path / "download" / "labels.csv"
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a new, empty user data dir
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            accept_downloads=True,
        )
        try:
            page = context.new_page()
            page.goto((out / "sheet.html").as_uri())
            progress = page.locator("#progress")
            assert progress.inner_text() == f"0 / {n} labelled"
            assert page.locator("tr.focused").get_attribute("data-row") == "0"
            page.keyboard.press("1")
            page.keyboard.press("0")
            page.keyboard.press("1")
            assert progress.inner_text() == f"3 / {n} labelled"
            assert page.locator("tr.focused").get_attribute("data-row") == "3"
            # a reload keeps the labels (localStorage) and focuses the first unlabelled row
            page.reload()
            assert page.locator("#progress").inner_text() == f"3 / {n} labelled"
            assert page.locator("tr.focused").get_attribute("data-row") == "3"
            # a click labels (and focuses) a row too; Backspace clears the focused row
            page.locator("tr[data-row='4'] button[data-label='0']").click()
            assert page.locator("#progress").inner_text() == f"4 / {n} labelled"
            page.keyboard.press("Backspace")
            assert page.locator("#progress").inner_text() == f"3 / {n} labelled"
            with page.expect_download() as info:
                page.locator("#download").click()
            download = info.value
            assert download.suggested_filename == "labels.csv"
            download.save_as(str(downloaded))
        finally:
            context.close()

    # the same bytes as labels.csv, but for the label (the last column) of the three labelled rows
    expected = [original[0]] + [
        line + label for line, label in zip(original[1:], ["1", "0", "1"] + [""] * (n - 3), strict=True)
    ]
    assert downloaded.read_text().splitlines() == expected

    labels = downloaded.parent / "fit" / "labels.csv"
    labels.parent.mkdir()
    shutil.copy(downloaded, labels)
    capsys.readouterr()
    assert main(["calibrate", "fit", str(labels), "--column", "stats_boundary_contrast"]) == 0
    printed = capsys.readouterr().out
    png = labels.parent / "stats_boundary_contrast.png"
    assert "plateau threshold for stats_boundary_contrast" in printed and f"plot: {png}" in printed
    with Image.open(png) as im:
        im.load()
        assert im.format == "PNG" and im.size[0] > 0
