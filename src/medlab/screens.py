"""Screenshots of the web app for ``make demo``: Debian's Chromium, driven by Playwright,
signs in as each demo user and saves what each workspace shows (PNG, 1280 px wide).

Chromium comes from Debian's package (``scripts/chromium.sh``); without it, or without
Playwright, the demo says so and takes none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")


class Screens:
    """A browser that signs in as the demo's users and saves pages as PNG files."""

    def __init__(self, url: str, tokens: dict[str, str], out: Path) -> None:
        self.url, self.tokens, self.out = url, tokens, out
        self.missing: str | None = None
        self._playwright: Any = None
        self._browser: Any = None
        self._pages: dict[str, Any] = {}
        self.saved: list[Path] = []
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            self.missing = "Playwright is not installed"
            return
        if not CHROMIUM.exists():
            self.missing = f"{CHROMIUM} is missing (scripts/chromium.sh installs it)"
            return
        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        out.mkdir(parents=True, exist_ok=True)

    def _page(self, user: str) -> Any:
        if user not in self._pages:
            context = self._browser.new_context(
                base_url=self.url, viewport={"width": 1280, "height": 800}
            )
            page = context.new_page()
            page.goto("/signin")
            page.fill("#token", self.tokens[user])
            page.click("button[type=submit]")
            page.wait_for_load_state()
            self._pages[user] = page
        return self._pages[user]

    def shot(
        self,
        user: str,
        path: str,
        name: str,
        until: str | None = None,
        upload: Path | None = None,
        element: str | None = None,
    ) -> Path | None:
        """``path`` as ``user`` sees it, saved as ``NAME.png`` (``until``: a selector to wait
        for, reloading, up to 30 s; ``upload``: a file given to the page's file field and
        the form sent; ``element``: a selector of the one part of the page to picture)."""
        if self._browser is None:
            return None
        page = self._page(user)
        page.goto(path)
        if until is not None:
            for _ in range(30):
                if page.locator(until).count():
                    break
                page.wait_for_timeout(1000)
                page.reload()
        if upload is not None:
            page.set_input_files("input[type=file]", str(upload))
            page.click("form button.primary")
            page.wait_for_load_state()
        page.wait_for_function(  # every chart drawn before the picture
            "[...document.querySelectorAll('.plot')].every(e => e.dataset.rendered)",
            timeout=30_000,
        )
        target = self.out / f"{name}.png"
        if element is not None:
            page.locator(element).first.screenshot(path=str(target))
        else:
            page.screenshot(path=str(target), full_page=True)
        self.saved.append(target)
        return target

    def close(self) -> None:
        """Close the browser."""
        if self._browser is not None:
            self._browser.close()
            self._playwright.stop()
            self._browser = None
