"""The web chat page of `llmkit serve`, driven in a real headless Chromium (Debian's `chromium` and
`chromium-driver`, through Selenium; no browser is downloaded) against a real server process on a tiny
random model with an API key: the page loads offline and without the key, asks for the key, streams a
reply that equals the API's own reply, sends the system prompt, shows the probabilities of each token,
edits and resends, regenerates, stops a long generation (the server cancels it), keeps the
conversation across a reload, and goes on with a conversation longer than the model's context.
tests/test_serve_web_robustness.py drives the page through what goes wrong."""

import json
import math
import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

import llmkit

from serve_fixtures import metric, running_server, save_wide_tiny_model

INSTALL = ("needs a headless Chromium with its driver and Selenium: `sudo apt-get install -y chromium "
           "chromium-driver` (Debian/Ubuntu) and `pip install selenium` (.ci/run installs both)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    webdriver = None
pytestmark = pytest.mark.skipif(webdriver is None or not CHROMIUM or not CHROMEDRIVER, reason=INSTALL)

KEY = "web-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CONTEXT = 1024
SYSTEM = "You are a player in a company of travelling actors."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, shakespeare_tokenizer):
    """A random tiny model (weights drawn wide so its greedy text varies with the prompt) with a context
    long enough for a generation that is still running when the test stops it."""
    return save_wide_tiny_model(tmp_path_factory.mktemp("web-tiny"), shakespeare_tokenizer, CONTEXT)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("web-log") / "server.log"
    with running_server(["--model", model_dir, "--served-model-name", "tiny", "--api-key", KEY,
                         "--max-batch-size", 4], log) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a browser or a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, for errors
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--force-prefers-reduced-motion"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(10)
    yield driver
    driver.quit()


# --- helpers -------------------------------------------------------------------------------------------------
def wait(driver, condition, timeout=15, what="the page"):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.02).until(lambda d: condition(d))
    except TimeoutException:
        raise AssertionError(f"timed out waiting for {what}; the page's console: {driver.get_log('browser')}") from None


def page_errors(driver) -> list[str]:
    """Errors in the page's console (script exceptions, Content-Security-Policy violations), leaving out
    the browser's note on each HTTP error status, which the page handles (the 401 before the key)."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]


def set_field(driver, element_id, value):
    """Type into a settings field as a user does (then leave it, which fires `change`)."""
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(str(value))
    field.send_keys(Keys.TAB)


def stored(driver) -> list[dict]:
    return json.loads(driver.execute_script("return localStorage.getItem('llmkit.conversations') || '[]'"))


def assistant_bodies(driver):
    return driver.find_elements(By.CSS_SELECTOR, "article.assistant .body")


def reply_done(driver, count):
    """The count-th reply has finished: its stats line is there and the Send button is back."""
    stats = driver.find_elements(By.CSS_SELECTOR, "article.assistant .stats")
    return len(stats) >= count and driver.find_element(By.ID, "send").is_displayed() and stats[count - 1]


def api_reply(server, messages, max_tokens):
    r = httpx.post(f"{server}/v1/chat/completions", headers=AUTH, timeout=30,
                   json={"model": "tiny", "messages": messages, "temperature": 0, "max_tokens": max_tokens})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def prompt_tokens(server, messages):
    return httpx.post(f"{server}/tokenize", headers=AUTH, json={"messages": messages}).json()["count"]


# --- tests ---------------------------------------------------------------------------------------------------
def test_page_and_assets_are_served_without_the_key_and_need_no_internet(server):
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    assert {"/static/app.js", "/static/style.css"} <= set(assets)
    static = Path(llmkit.__file__).parent / "serve" / "static"
    scripts = [f"/static/{p.name}" for p in static.glob("*.js")]  # every module the page may import
    assert len(scripts) >= 8
    for path in set(assets) | set(scripts):
        r = httpx.get(f"{server}{path}")
        assert r.status_code == 200 and r.content, path
        # Nothing is fetched from elsewhere: no absolute URL in a src, href, import or url().
        assert not re.search(r'(src|href)="(https?:)?//|from\s+"(https?:)?//|url\((https?:)?//', r.text), path
    assert httpx.get(f"{server}/static/nothing.js").status_code == 404
    assert httpx.get(f"{server}/static/..%2Fserver.py").status_code == 404
    assert httpx.get(f"{server}/v1/models").status_code == 401  # the API itself still needs the key
    assert httpx.get(f"{server}/v1/models", headers=AUTH).status_code == 200


MARKDOWN_CASES = {
    "**bold** and *it* and `a<b`": "<p><strong>bold</strong> and <em>it</em> and <code>a&lt;b</code></p>",
    "<img src=x onerror=alert(1)>": "<p>&lt;img src=x onerror=alert(1)&gt;</p>",
    "[x](javascript:alert(1))": "<p>[x](javascript:alert(1))</p>",
    "- a\n- b\n\n1. c\n2. d": "<ul><li>a</li><li>b</li></ul>\n<ol><li>c</li><li>d</li></ol>",
    "snake_case and 2*3*4": "<p>snake_case and 2*3*4</p>",
    "# Title\none\ntwo": "<h1>Title</h1>\n<p>one<br>two</p>",
}


def test_markdown_renderer_escapes_html_and_renders_code_blocks(server, browser):
    browser.get(f"{server}/")
    render = """const done = arguments[arguments.length - 1];
        import('/static/markdown.js').then(m => done(arguments[0].map(m.renderMarkdown)));"""
    assert browser.execute_async_script(render, list(MARKDOWN_CASES)) == list(MARKDOWN_CASES.values())
    code = browser.execute_async_script(render, ["```python\nprint('<b>')\n```\nafter", "```js\nstill streaming"])
    assert '<pre><code class="language-python">print(&#39;&lt;b&gt;&#39;)</code></pre>' in code[0]
    assert code[0].endswith("<p>after</p>")
    assert '<code class="language-js">still streaming</code>' in code[1]  # an unclosed fence while streaming


def test_chat_in_a_real_browser(server, browser):
    browser.get(f"{server}/")
    browser.execute_script("localStorage.clear()")
    browser.refresh()
    # Without the key the page says so and opens the settings; with it, it finds the served model.
    wait(browser, lambda d: "API key" in d.find_element(By.ID, "notice").text, what="the API-key notice")
    set_field(browser, "api-key", KEY)
    wait(browser, lambda d: d.find_element(By.ID, "model-name").text == "tiny", what="the model name")
    browser.find_element(By.ID, "system-prompt").send_keys(SYSTEM)
    set_field(browser, "temperature", 0)
    set_field(browser, "max-tokens", 16)

    # Shift+Enter is a new line, Enter sends.
    box = browser.find_element(By.ID, "input")
    box.send_keys("Speak the speech,")
    ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
    box.send_keys("I pray you")
    assert not browser.find_elements(By.CSS_SELECTOR, "article.user")
    box.send_keys(Keys.ENTER)
    stats = wait(browser, lambda d: reply_done(d, 1), what="the first reply")
    user_text = "Speak the speech,\nI pray you"
    assert browser.find_element(By.CSS_SELECTOR, "article.user .body").text == user_text
    assert assistant_bodies(browser)[0].text.strip()

    # The reply the page streamed is the API's own greedy reply to the same messages, system prompt included.
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user_text}]
    [conversation] = stored(browser)
    assert conversation["system"] == SYSTEM and conversation["title"] == "Speak the speech, I pray you"
    reply = conversation["messages"][1]
    assert reply["content"] == api_reply(server, messages, 16)
    assert int(stats.get_attribute("data-prompt")) == prompt_tokens(server, messages)
    assert prompt_tokens(server, messages[1:]) < prompt_tokens(server, messages)
    completion = int(stats.get_attribute("data-completion"))
    assert 1 <= completion <= 16 and "tokens/s" in stats.text and f"{completion} tokens" in stats.text

    # Probabilities: one span per token, concatenating to the reply; a tap shows the alternatives.
    browser.find_element(By.CSS_SELECTOR, "article.assistant .toggle-tokens").click()
    spans = browser.find_elements(By.CSS_SELECTOR, "article.assistant .tok")
    assert "".join(s.get_attribute("textContent") for s in spans) == reply["content"]
    assert completion - 1 <= len(spans) <= completion  # a final stop token adds no text
    k = next(i for i, s in enumerate(spans) if s.get_attribute("textContent").strip())  # one with a visible glyph
    spans[k].click()
    popup = browser.find_element(By.ID, "token-popup")
    assert popup.is_displayed()
    rows = popup.find_elements(By.CSS_SELECTOR, "tr")
    assert 5 <= len(rows) <= 6  # top_logprobs=5, and the chosen token if it is not among them
    percents = [float(r.find_element(By.CSS_SELECTOR, ".pct").text.rstrip("%").lstrip("<")) for r in rows]
    assert percents == sorted(percents, reverse=True) and sum(percents) <= 100.5 and percents[0] > 0
    # At temperature 0 the chosen token is the most likely one: the first row, and its stored probability.
    assert rows[0].get_attribute("class") == "chosen"
    token = reply["tokens"][k]
    assert token[3] == 0 and abs(percents[0] - 100 * math.exp(token[1])) < 0.06
    browser.find_element(By.ID, "input").send_keys(Keys.ESCAPE)
    assert not popup.is_displayed()

    # Regenerate replaces the reply (greedy: with the same text); edit-and-resend replaces the rest.
    browser.find_element(By.CSS_SELECTOR, "article.assistant .regenerate").click()
    wait(browser, lambda d: reply_done(d, 1) and stored(d)[0]["messages"][1].get("stats"), what="the regenerated reply")
    assert [m["content"] for m in stored(browser)[0]["messages"]] == [user_text, reply["content"]]
    browser.find_element(By.CSS_SELECTOR, "article.user .edit").click()
    editor = browser.find_element(By.CSS_SELECTOR, "article.user textarea.editor")
    editor.clear()
    editor.send_keys("To be, or not to be", Keys.ENTER)
    wait(browser, lambda d: reply_done(d, 1) and stored(d)[0]["messages"][0]["content"] == "To be, or not to be",
         what="the reply to the edited message")
    edited = stored(browser)[0]["messages"]
    assert len(edited) == 2
    assert edited[1]["content"] == api_reply(server, [messages[0], {"role": "user", "content": "To be, or not to be"}], 16)

    # A long generation streams in (its text grows while Stop is shown); Esc stops it and the server
    # cancels the request: nothing left running, one more request finished as cancelled.
    cancelled = metric(server, 'llmkit_requests_finished_total{reason="cancelled"}', AUTH)
    set_field(browser, "max-tokens", CONTEXT - 100)  # greedy, this reply runs to max_tokens (no stop token)
    box.send_keys("Tell me a long story", Keys.ENTER)
    lengths = []

    def grew(d):
        lengths.append(len(assistant_bodies(d)[-1].get_attribute("textContent")))
        return len(set(lengths)) >= 3

    wait(browser, grew, what="the long reply to stream in")
    assert browser.find_element(By.ID, "stop").is_displayed()
    box.send_keys(Keys.ESCAPE)
    stats = wait(browser, lambda d: reply_done(d, 2), what="the stopped reply")
    assert stats.get_attribute("data-finish") == "stopped" and "stopped" in stats.text
    deadline = time.monotonic() + 2
    while metric(server, "llmkit_requests_running", AUTH) != 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert metric(server, "llmkit_requests_running", AUTH) == 0
    assert metric(server, 'llmkit_requests_finished_total{reason="cancelled"}', AUTH) == cancelled + 1
    partial = stored(browser)[0]["messages"][3]
    assert partial["content"] and partial["stats"]["finish"] == "stopped"
    assert partial["stats"]["completion"] < CONTEXT - 100

    # After a reload the conversation is in the list; a new chat is empty; the list brings it back.
    browser.refresh()
    wait(browser, lambda d: d.find_element(By.ID, "model-name").text == "tiny", what="the reloaded page")
    browser.find_element(By.ID, "new-chat").click()
    assert not browser.find_elements(By.CSS_SELECTOR, "article.message")
    [entry] = browser.find_elements(By.CSS_SELECTOR, "#conversations .open")
    assert entry.text == "To be, or not to be"
    entry.click()
    shown = browser.find_elements(By.CSS_SELECTOR, "article.message")
    assert [e.get_attribute("class") for e in shown] == ["message user", "message assistant"] * 2
    assert browser.find_element(By.ID, "system-prompt").get_attribute("value") == SYSTEM
    assert "stopped" in shown[3].find_element(By.CSS_SELECTOR, ".stats").text
    assert page_errors(browser) == []


def test_a_conversation_longer_than_the_context_goes_on(server, browser):
    """The page asks the server to drop the oldest turns that do not fit ("truncate": "oldest") rather than
    refuse the conversation, and the reply's stats say how many went."""
    turn = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 12
    history = [{"role": ("user", "assistant")[i % 2], "content": f"{i}: {turn}"} for i in range(8)]
    assert prompt_tokens(server, history) > CONTEXT
    conversation = {"id": "long", "title": "long", "system": "", "messages": history, "created": 1, "updated": 2}
    browser.get(f"{server}/")
    browser.execute_script("localStorage.clear();"
                           "localStorage.setItem('llmkit.settings', JSON.stringify(arguments[0]));"
                           "localStorage.setItem('llmkit.conversations', JSON.stringify([arguments[1]]));"
                           "localStorage.setItem('llmkit.current', JSON.stringify('long'));",
                           {"apiKey": KEY, "max_tokens": "4", "temperature": 0, "probabilities": False}, conversation)
    browser.refresh()
    wait(browser, lambda d: d.find_element(By.ID, "model-name").text == "tiny", what="the page")
    browser.find_element(By.ID, "input").send_keys("And now?", Keys.ENTER)
    stats = wait(browser, lambda d: reply_done(d, 1), what="the reply to the long conversation")  # the only stats
    dropped = int(stats.get_attribute("data-truncated"))
    assert 1 <= dropped < len(history) and "oldest messages were left out to fit the context" in stats.text
    assert not browser.find_elements(By.CSS_SELECTOR, "article.assistant .error")
    assert page_errors(browser) == []
