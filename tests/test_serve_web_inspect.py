"""The web page's Inspect view in a real headless Chromium (as tests/test_serve_web.py drives the chat)
against a real server process with an API key: attention on a text draws the token strip, the per-layer
table and the heatmap with the API's own numbers; choosing a token or a head asks again; the logit lens
and next-token tables show the API's tokens; a text that is too long shows the server's message and the
view works on; after a chat reply, "the conversation up to its last reply" inspects the tokens the chat
template rendered."""

import json
import os

import httpx
import pytest

from serve_fixtures import running_server, save_wide_tiny_model
from test_serve_web import browser, page_errors, pytestmark, set_field, wait  # noqa: F401 - fixture and skip mark

try:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
except ImportError:  # skipped by pytestmark
    pass

KEY = "inspect-web-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TEXT = "To be, or not to be, that is the question"


@pytest.fixture(scope="module")
def server(tmp_path_factory, shakespeare_tokenizer):
    out = tmp_path_factory.mktemp("web-inspect")
    model_dir = save_wide_tiny_model(out / "model", shakespeare_tokenizer, 512)
    with running_server(["--model", model_dir, "--served-model-name", "tiny", "--api-key", KEY], out / "server.log") as url:
        yield url


def wait_for(driver, condition, what):
    """wait() for a view that is redrawn whole on each reply: an element read just as it is replaced
    counts as "not yet"."""
    def settled(d):
        try:
            return condition(d)
        except StaleElementReferenceException:
            return False

    return wait(driver, settled, what=what)


def shown(token: str) -> str:
    """A token as the page writes it (probabilities.js `visible`)."""
    return token.replace(" ", "\u2423").replace("\n", "\u21b5").replace("\t", "\u21e5") if token else "(no text: part of a character or a special token)"


def api(server, kind, **body):
    r = httpx.post(f"{server}/v1/inspect/{kind}", headers=AUTH, json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def table_rows(driver, table_id):
    return driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")


def chips(row):
    """A table row's attended tokens as (token text, percent)."""
    out = []
    for chip in row.find_elements(By.CSS_SELECTOR, ".chip"):
        text, _, percent = chip.text.rpartition(" ")
        out.append((text, float(percent.rstrip("%"))))
    return out


def expected_chips(reply, row):
    ranked = sorted(enumerate(row), key=lambda jw: -jw[1])[:5]
    return [(shown(reply["tokens"][j]), 100 * w) for j, w in ranked]


def check_table(driver, reply, head=None):
    rows = table_rows(driver, "attention-table")
    assert len(rows) == reply["n_layers"]
    for layer, row in enumerate(rows):
        weights = reply["mean"][layer] if head is None else reply["heads"][layer][head]
        got, want = chips(row), expected_chips(reply, weights)
        assert [t for t, _ in got] == [t for t, _ in want]
        assert all(abs(a - b) < 0.051 for (_, a), (_, b) in zip(got, want))


def selected(driver):
    return int(driver.find_element(By.CSS_SELECTOR, "#attention-tokens .itok.sel").get_attribute("data-i"))


def heatmap_ink(driver) -> tuple[int, int, int]:
    """(width, height, pixels that are not white) of the heatmap canvas."""
    return tuple(driver.execute_script("""
        const c = document.getElementById('attention-heatmap');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let ink = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] < 250 || d[i + 1] < 250) ink++;
        return [c.width, c.height, ink];"""))


def test_inspect_view_in_a_real_browser(server, browser):
    browser.get(f"{server}/")
    browser.execute_script("localStorage.clear()")
    browser.refresh()
    wait_for(browser, lambda d: "API key" in d.find_element(By.ID, "notice").text, what="the API-key notice")
    set_field(browser, "api-key", KEY)
    wait_for(browser, lambda d: d.find_element(By.ID, "model-name").text == "tiny", what="the model name")

    browser.find_element(By.ID, "view-inspect").click()
    assert browser.find_element(By.ID, "inspect-view").is_displayed()
    assert not browser.find_element(By.ID, "messages").is_displayed()
    assert not browser.find_element(By.ID, "source-reply").is_enabled()  # no reply yet in this conversation
    box = browser.find_element(By.ID, "inspect-text")
    box.clear()
    box.send_keys(TEXT)

    # Attention: the last token by default, every layer's mean, the middle layer's heatmap.
    browser.find_element(By.ID, "run-attention").click()
    reply = api(server, "attention", text=TEXT)
    n = len(reply["tokens"])
    wait_for(browser, lambda d: len(table_rows(d, "attention-table")) == reply["n_layers"], what="the attention table")
    strip = browser.find_elements(By.CSS_SELECTOR, "#attention-tokens .itok")
    assert [s.get_attribute("textContent") for s in strip] == [shown(t) for t in reply["tokens"]]
    assert selected(browser) == n - 1
    check_table(browser, reply)
    width, height, ink = heatmap_ink(browser)
    assert width == height and width % n == 0 and ink > n  # one row per token, drawn
    assert Select(browser.find_element(By.ID, "attention-layer")).first_selected_option.text == f"layer {reply['layer']}"

    # Choosing a token asks again: the strip, the table and the heatmap's outline follow it.
    strip[3].click()
    wait_for(browser, lambda d: selected(d) == 3, what="token 3 to be chosen")
    check_table(browser, api(server, "attention", text=TEXT, token=3))
    # One head instead of the mean.
    Select(browser.find_element(By.ID, "attention-head")).select_by_value("1")
    wait_for(browser, lambda d: "head 1" in d.find_element(By.CSS_SELECTOR, ".heatmap figcaption").text, what="head 1")
    assert selected(browser) == 3
    check_table(browser, api(server, "attention", text=TEXT, token=3, head=1), head=1)

    # The logit lens: a row per layer (and the embeddings), a column per token.
    browser.find_element(By.ID, "run-lens").click()
    lens = api(server, "lens", text=TEXT, top=5)
    wait_for(browser, lambda d: len(table_rows(d, "lens-table")) == lens["n_layers"] + 1, what="the lens table")
    header = [th.get_attribute("textContent") for th in browser.find_elements(By.CSS_SELECTOR, "#lens-table thead th")]
    assert header[1:] == [shown(t) for t in lens["tokens"]]
    last = [td.get_attribute("textContent") for td in table_rows(browser, "lens-table")[-1].find_elements(By.TAG_NAME, "td")]
    assert last == [f"{shown(texts[0])} {round(100 * probs[0])}" for texts, probs in zip(lens["top_texts"][-1], lens["top_probs"][-1])]

    # Next-token probabilities.
    browser.find_element(By.ID, "run-next").click()
    following = api(server, "next_token", text=TEXT, top=10)
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#next-table tr")) == 10, what="the next-token table")
    first = browser.find_elements(By.CSS_SELECTOR, "#next-table tr")[0].find_elements(By.TAG_NAME, "td")
    assert first[0].get_attribute("textContent") == shown(following["top_texts"][0])

    # A text over the limit: the server's message, and the view works on.
    browser.execute_script("arguments[0].value = arguments[1]", box, "Words, words, words. " * 100)
    browser.find_element(By.ID, "run-attention").click()
    status = browser.find_element(By.ID, "inspect-status")
    wait_for(browser, lambda d: "at most 256" in status.text, what="the too-long message")
    assert "error" in status.get_attribute("class")
    browser.execute_script("arguments[0].value = arguments[1]", box, TEXT)
    browser.find_element(By.ID, "run-attention").click()
    wait_for(browser, lambda d: status.text == f"{n} tokens" and len(table_rows(d, "attention-table")) == reply["n_layers"],
         what="attention after the error")

    # After a reply in the chat, the conversation up to its last reply, as the chat template renders it.
    browser.find_element(By.ID, "view-chat").click()
    set_field(browser, "temperature", 0)
    set_field(browser, "max-tokens", 6)
    browser.find_element(By.ID, "input").send_keys("Who's there?\n")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "article.assistant .stats")
         and d.find_element(By.ID, "send").is_displayed(), what="the chat reply")
    [stored] = json.loads(browser.execute_script("return localStorage.getItem('llmkit.conversations')"))
    reply_text = stored["messages"][1]["content"]
    browser.find_element(By.ID, "view-inspect").click()
    browser.find_element(By.ID, "source-reply").click()
    assert not box.is_enabled()  # the text box is not what is inspected now
    browser.find_element(By.ID, "run-attention").click()
    messages = [{"role": "user", "content": "Who's there?"}, {"role": "assistant", "content": reply_text}]
    conversation = api(server, "attention", messages=messages)
    wait_for(browser, lambda d: [s.get_attribute("textContent") for s in d.find_elements(By.CSS_SELECTOR, "#attention-tokens .itok")]
         == [shown(t) for t in conversation["tokens"]], what="the conversation's tokens")
    check_table(browser, conversation)
    if os.environ.get("LLMKIT_SCREENSHOTS"):  # a picture of the view, to look at by eye
        browser.save_screenshot(os.path.join(os.environ["LLMKIT_SCREENSHOTS"], "inspect-attention.png"))
    assert page_errors(browser) == []
