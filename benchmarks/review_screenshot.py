"""The README's screenshot of `supersub review`: the page in headless Chromium (Playwright, /usr/bin/chromium).

    python benchmarks/review_screenshot.py RUN DISCOVERED docs/results/review.png [--superclass S --subclass N]

Serves the review app of RUN and DISCOVERED on a free local port, opens the Clusters tab, types a name into
the first cluster (nothing is saved) and writes a PNG. The README's is loso-reptile seed 0's run and the
discover folder of benchmarks/extend.py (half of its test images).

Committed: docs/results/review.png (the README's screenshot), from the command above.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

from supersub import api


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("discovered", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--superclass", default="reptile", help="typed into the first cluster's superclass box")
    ap.add_argument("--subclass", default="salamander", help="typed into its subclass box")
    a = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(api.review_app(a.run, discovered=a.discovered), host="127.0.0.1",
                                           port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1200, "height": 760})
        page.goto(f"http://127.0.0.1:{port}", wait_until="load")
        page.wait_for_selector("#predictions .tile")
        page.click("#tab-clusters")
        first = page.locator("section.cluster").first
        first.locator("input.superclass").fill(a.superclass)
        first.locator("input.subclass").fill(a.subclass)
        page.wait_for_timeout(500)  # thumbnails load lazily
        page.screenshot(path=str(a.out))
        browser.close()
    server.should_exit = True


if __name__ == "__main__":
    main()
