"""What the browser tests share: Debian's chromium, the flags it runs with here, and the skip.

Playwright drives /usr/bin/chromium (never `playwright install`: no browser downloads here;
`.ci/run` installs Debian's package)."""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# headless as root in a closed network (/work/shared/ARCHITECTURE.md, "Facts found since")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def sync_playwright_or_skip():
    """Playwright's `sync_playwright`, or a skip saying what is missing (playwright or chromium)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (it comes with the dev extra: pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    return sync_playwright
