"""Screenshots of `llmkit serve`'s web chat page for the README, taken in headless Chromium (Debian's
`chromium` + `chromium-driver`, driven by Selenium; nothing is downloaded):

    python3 docs/screenshots.py [--model smollm2] [--out docs/images]

It starts `llmkit serve` on a free port, has a short conversation through the page (greedy, so the
pictures are reproducible) and writes chat.png (the light page after the conversation) and
probabilities.png (the probabilities view, the popup open on the least certain token of the reply).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
SYSTEM = "You are a helpful assistant. Answer briefly."
TURNS = ["What is the capital of France?",
         "Write a Python function that checks whether a word is a palindrome."]


def start_server(model: str, log: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "llmkit.cli", "serve", "--model", model, "--port", "0",
                                    "--served-model-name", model], stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server exited:\n{log.read_text()}")
        found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text())
        if found:
            try:
                if httpx.get(f"{found.group(1)}/health", timeout=2).status_code == 200:
                    return process, found.group(1)
            except httpx.TransportError:
                pass
        time.sleep(0.2)
    process.kill()
    sys.exit(f"the server was not ready in 10 minutes:\n{log.read_text()}")


def browser(width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not download anything
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        sys.exit("needs chromium and chromedriver: sudo apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars",
                f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def converse(driver, url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    driver.execute_script("localStorage.clear()")
    driver.refresh()
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "server-status").text == "ready")
    driver.find_element(By.CSS_SELECTOR, "#settings summary").click()
    driver.find_element(By.ID, "system-prompt").send_keys(SYSTEM)
    for field, value in (("temperature", 0), ("max-tokens", 160)):
        element = driver.find_element(By.ID, field)
        element.clear()
        element.send_keys(str(value), Keys.TAB)
    for n, text in enumerate(TURNS, 1):
        driver.find_element(By.ID, "input").send_keys(text, Keys.ENTER)
        WebDriverWait(driver, 300).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "article.assistant .stats")) == n
            and d.find_element(By.ID, "send").is_displayed())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=820)
    args = parser.parse_args()
    from selenium.webdriver.common.by import By

    args.out.mkdir(parents=True, exist_ok=True)
    process, url = start_server(args.model, Path(tempfile.mkdtemp()) / "server.log")
    driver = browser(args.width, args.height)
    try:
        converse(driver, url)
        driver.save_screenshot(str(args.out / "chat.png"))
        last = driver.find_elements(By.CSS_SELECTOR, "article.assistant")[-1]
        last.find_element(By.CSS_SELECTOR, ".toggle-tokens").click()
        # The popup on the reply's least certain token: where the model weighed real alternatives.
        index = driver.execute_script("""
            const c = JSON.parse(localStorage.getItem('llmkit.conversations'))[0];
            const tokens = c.messages[c.messages.length - 1].tokens;
            let best = 0;
            tokens.forEach((t, i) => { if (t[0].trim() && t[1] < tokens[best][1]) best = i; });
            return best;""")
        span = last.find_elements(By.CSS_SELECTOR, ".tok")[index]
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", span)
        span.click()
        driver.save_screenshot(str(args.out / "probabilities.png"))
        print(f"wrote {args.out / 'chat.png'} and {args.out / 'probabilities.png'}")
    finally:
        driver.quit()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
