"""The documentation's pictures of the dashboard, taken of real runs: the run dirs `python bench/figures.py --keep
DIR` leaves (the demo, the cls-lora, tag-lora and gen-lora recipes on the real models and data).

    python bench/figures.py --keep runs/figures && python bench/screenshots.py runs/figures

writes docs/ui-run.png (the demo run's page), docs/ui-gen.png (the gen-lora run's page) and docs/ui-compare.png
(the demo against the cls-lora recipe), through `ftkit ui` on 127.0.0.1 and Debian's headless chromium (`make
browser` installs it)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = {"ui-run.png": "/run/0/demo", "ui-gen.png": "/run/0/gen-lora",
         "ui-compare.png": "/compare?run=0/demo&run=0/cls-lora"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(folder: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [n for n in ("demo", "cls-lora", "gen-lora") if not (folder / n / "metrics.json").is_file()]
    if missing:
        raise SystemExit(f"{folder}: no finished run dir {', '.join(missing)}; run bench/figures.py --keep {folder}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "ftkit", "ui", str(folder), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        for name, page in PAGES.items():
            driver.get(url + page)
            time.sleep(1)
            driver.save_screenshot(str(ROOT / "docs" / name))
            print(f"wrote docs/{name} ({page})")
    finally:
        driver.quit()
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "runs" / "figures")
