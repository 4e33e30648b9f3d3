"""The web page as a user meets it, in headless Chromium (as tests/test_serve_web.py drives it): the
settings reach the request the server receives and stay across a reload (the system prompt of a
conversation too); the keyboard focus is never dropped on the page's body when a button it was on goes
away; every control has a name for a screen reader, and the Inspect view's tokens can be chosen with the
keyboard; replies full of HTML render as text (checked with the browser's own HTML parser); GitHub's
table rule and CommonMark's backslash escapes; errors from the server (500, 400, an error event and a
dropped connection mid-reply) are shown and the page goes on; the Inspect view shows the API's own
numbers (every chip, heatmap cell, lens cell and next-token row, for a text in several scripts and for
the longest text allowed) and refuses what the API refuses with its message.

Two servers: a real `llmkit serve` on a tiny random model (the numbers), and a stand-in that serves the
page's real files and records each chat request (what the page sends; crafted replies and failures)."""

import asyncio
import math

import httpx
import pytest

from serve_fixtures import running_server, save_wide_tiny_model
from test_serve_web import browser, page_errors, pytestmark, set_field, stored, wait  # noqa: F401 - fixture, skip mark
from test_serve_web_inspect import shown, wait_for
from test_serve_web_robustness import Backend, chunk, conversation, idle, open_page, render, replied, sse

try:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
except ImportError:  # skipped by pytestmark
    pass


# --- the servers ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory, shakespeare_tokenizer):
    out = tmp_path_factory.mktemp("web-audit")
    model_dir = save_wide_tiny_model(out / "model", shakespeare_tokenizer, 512)
    with running_server(["--model", model_dir, "--served-model-name", "tiny"], out / "server.log") as url:
        yield url


class Dropped(Exception):
    """Raised inside a streamed reply: uvicorn closes the connection without ending the response."""


async def scripted(last: str):
    """The reply to the last user message: "SAY:text" streams the text; "MIDERROR" and "DROP" stream a
    part, then an error event or a broken connection; "SLOW" streams until the client goes; else "ok"."""
    yield chunk("")
    if last == "SLOW":
        for i in range(3000):
            yield chunk(f"w{i} ")
            await asyncio.sleep(0.02)
    if last in ("MIDERROR", "DROP"):
        yield chunk("a partial reply")
        await asyncio.sleep(0.05)
        if last == "DROP":
            raise Dropped("the test drops the connection")
        yield sse({"error": {"message": "the engine failed: a test's error", "type": "server_error"}})
        return
    text = last[4:] if last.startswith("SAY:") else "ok"
    for i in range(0, len(text), 7):
        yield chunk(text[i:i + 7])
    yield chunk(finish="stop")
    yield sse("[DONE]")


class StandIn(Backend):
    """The page's files (llmkit.serve.web.web_routes) and a chat API that records each request's body."""

    def __init__(self):
        from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse

        self.bodies = []

        async def chat(request):
            body = await request.json()
            self.bodies.append(body)
            last = body["messages"][-1]["content"]
            if last == "HTTP500":
                return PlainTextResponse("Internal Server Error", status_code=500)
            if last == "HTTP400":
                return JSONResponse({"error": {"message": "max_tokens: a test's refusal", "type": "invalid_request_error",
                                               "param": "max_tokens", "code": None}}, status_code=400)
            return StreamingResponse(scripted(last), media_type="text/event-stream")

        super().__init__(chat=chat, log_level="critical")


@pytest.fixture(scope="module")
def standin():
    server = StandIn()
    yield server
    server.stop()


# --- helpers -------------------------------------------------------------------------------------------------
def open_settings(driver):
    if not driver.find_element(By.ID, "settings").get_attribute("open"):
        driver.find_element(By.CSS_SELECTOR, "#settings summary").click()


def focused(driver) -> str:
    """The focused element, as `tag#id.class`."""
    return driver.execute_script("const a = document.activeElement; return `${a.tagName}#${a.id}.${a.className}`")


def unnamed_controls(driver) -> list[str]:
    """Controls on screen (what a keyboard can reach) whose accessible name is empty, from Chromium's own
    accessibility tree."""
    tree = driver.execute_cdp_cmd("Accessibility.getFullAXTree", {})
    roles = {"button", "textbox", "combobox", "spinbutton", "checkbox", "radio", "link", "listbox", "slider"}
    out = []
    for node in tree["nodes"]:
        role = node.get("role", {}).get("value")
        if role in roles and not node.get("ignored") and not node.get("name", {}).get("value", "").strip():
            out.append(f"{role} (DOM node {node.get('backendDOMNodeId')})")
    return out


def accessible_name(driver, element) -> str:
    """The name Chromium gives the element in its accessibility tree (what a screen reader reads)."""
    driver.execute_script("window.__audit = arguments[0]", element)
    handle = driver.execute_cdp_cmd("Runtime.evaluate", {"expression": "window.__audit"})["result"]["objectId"]
    nodes = driver.execute_cdp_cmd("Accessibility.getPartialAXTree", {"objectId": handle, "fetchRelatives": False})["nodes"]
    return nodes[0].get("name", {}).get("value", "")


# --- what the page sends, and what it keeps ------------------------------------------------------------------
def test_settings_are_sent_as_set_and_kept_across_a_reload(standin, browser):
    open_page(browser, standin.url, settings={"probabilities": True})
    open_settings(browser)
    browser.find_element(By.ID, "system-prompt").send_keys("Answer in verse.")
    for field, value in [("temperature", "0.3"), ("top-p", "0.85"), ("max-tokens", "12"), ("seed", "41")]:
        set_field(browser, field, value)
    browser.find_element(By.ID, "input").send_keys("SAY:first", Keys.ENTER)
    wait(browser, replied, what="the reply")
    sent = standin.bodies[-1]
    assert sent["messages"] == [{"role": "system", "content": "Answer in verse."}, {"role": "user", "content": "SAY:first"}]
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"], sent["seed"]) == (0.3, 0.85, 12, 41)
    assert sent["stream"] is True and sent["model"] == "mock" and sent["truncate"] == "oldest"
    assert sent["logprobs"] is True and sent["top_logprobs"] == 5

    # After a reload the form holds the same settings, and the next request is asked with them.
    browser.refresh()
    wait(browser, lambda d: d.find_element(By.ID, "server-status").text == "ready", what="the reloaded page")
    open_settings(browser)
    values = {f: browser.find_element(By.ID, f).get_attribute("value")
              for f in ("temperature", "top-p", "max-tokens", "seed", "system-prompt")}
    assert values == {"temperature": "0.3", "top-p": "0.85", "max-tokens": "12", "seed": "41",
                      "system-prompt": "Answer in verse."}
    # Changed settings: no probabilities, no max tokens (the server decides), and a new system prompt for
    # this conversation, typed and then the page reloaded (it was lost: only the default was stored).
    browser.find_element(By.ID, "probabilities").click()
    set_field(browser, "max-tokens", "")
    box = browser.find_element(By.ID, "system-prompt")
    box.clear()
    box.send_keys("Answer in prose.", Keys.TAB)
    browser.refresh()
    wait(browser, lambda d: d.find_element(By.ID, "server-status").text == "ready", what="the reloaded page")
    assert browser.find_element(By.ID, "system-prompt").get_attribute("value") == "Answer in prose."
    assert stored(browser)[0]["system"] == "Answer in prose."
    browser.find_element(By.ID, "input").send_keys("SAY:second", Keys.ENTER)
    wait(browser, lambda d: replied(d, 2), what="the second reply")
    sent = standin.bodies[-1]
    assert sent["messages"][0] == {"role": "system", "content": "Answer in prose."}
    assert [m["content"] for m in sent["messages"][1:]] == ["SAY:first", "first", "SAY:second"]
    assert "max_tokens" not in sent and "logprobs" not in sent and sent["seed"] == 41
    assert page_errors(browser) == []


def test_sampling_settings_take_effect_on_a_real_server(server, browser):
    """The reply the page streams at temperature 1 with a seed, top_p and max tokens is the API's own
    reply to the same request: each setting reached the server (a seed or limit left out changes it)."""
    open_page(browser, server, settings={"temperature": 1, "top_p": 0.95, "seed": 1234, "max_tokens": "7"})
    browser.find_element(By.ID, "input").send_keys("Good morrow", Keys.ENTER)
    wait(browser, replied, what="the reply")
    reply = stored(browser)[0]["messages"][1]
    r = httpx.post(f"{server}/v1/chat/completions", timeout=30, json={
        "model": "tiny", "messages": [{"role": "user", "content": "Good morrow"}], "temperature": 1, "top_p": 0.95,
        "seed": 1234, "max_tokens": 7})
    assert r.status_code == 200, r.text
    assert reply["content"] == r.json()["choices"][0]["message"]["content"]
    assert reply["stats"]["completion"] == r.json()["usage"]["completion_tokens"] <= 7
    assert page_errors(browser) == []


# --- the keyboard and screen readers -------------------------------------------------------------------------
def test_the_focus_is_never_dropped_on_the_page(standin, browser):
    """A button pressed and then hidden or redrawn left the focus on the page's body (a keyboard user had
    to find the message box again): it goes to the message box, or to the redrawn button."""
    open_page(browser, standin.url, settings={"probabilities": False})
    browser.find_element(By.ID, "input").send_keys("SAY:hello")
    browser.find_element(By.ID, "send").click()
    assert focused(browser) == "TEXTAREA#input."  # at once: typing the next message can start
    wait(browser, replied, what="the reply")
    browser.find_element(By.CSS_SELECTOR, "article.assistant .regenerate").click()
    assert focused(browser) == "TEXTAREA#input."
    wait(browser, replied, what="the regenerated reply")

    browser.find_element(By.CSS_SELECTOR, "article.user .edit").click()
    assert focused(browser) == "TEXTAREA#.editor"
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    assert focused(browser) == "BUTTON#.edit"  # back on the Edit button of that message
    browser.find_element(By.CSS_SELECTOR, "article.user .edit").click()
    browser.find_element(By.CSS_SELECTOR, "article.user .cancel-edit").click()
    assert focused(browser) == "BUTTON#.edit"

    browser.find_element(By.ID, "input").send_keys("SLOW", Keys.ENTER)
    wait(browser, lambda d: "w3" in d.find_elements(By.CSS_SELECTOR, "article.assistant .body")[-1].text, what="the reply")
    messages = browser.find_element(By.ID, "messages")
    assert messages.get_attribute("aria-live") == "polite" and messages.get_attribute("aria-busy") == "true"
    browser.find_element(By.ID, "stop").click()
    wait(browser, idle, what="the stopped reply")
    assert focused(browser) == "TEXTAREA#input."
    assert messages.get_attribute("aria-busy") == "false"  # read out once, whole
    assert page_errors(browser) == []


def test_the_probabilities_toggle_keeps_the_focus(standin, browser):
    open_page(browser, standin.url, conversations=[conversation("c", [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "ok", "tokens": [["ok", -0.1, [["ok", -0.1], ["no", -2.5]], 0]]}])], current="c")
    toggle = browser.find_element(By.CSS_SELECTOR, ".toggle-tokens")
    toggle.click()
    assert browser.find_element(By.CSS_SELECTOR, ".toggle-tokens").text == "Text"
    assert focused(browser) == "BUTTON#.toggle-tokens"  # the redrawn toggle: Enter switches back
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    assert browser.find_element(By.CSS_SELECTOR, ".toggle-tokens").text == "Probabilities"
    assert page_errors(browser) == []


def test_every_control_has_a_name_and_deleting_keeps_the_focus(standin, browser):
    said = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    open_page(browser, standin.url, conversations=[conversation("a", said, "Alpha", 3), conversation("b", said, "Beta", 2)],
              current="a")
    open_settings(browser)
    assert unnamed_controls(browser) == []
    assert accessible_name(browser, browser.find_element(By.ID, "input")) == "Message"
    assert browser.find_element(By.ID, "notice").get_attribute("role") == "alert"  # "needs an API key" is read out
    current, other = browser.find_elements(By.CSS_SELECTOR, "#conversations .conversation")
    assert current.find_element(By.CSS_SELECTOR, ".open").get_attribute("aria-current") == "true"
    assert accessible_name(browser, current.find_element(By.CSS_SELECTOR, ".delete")) == 'Delete "Alpha"'  # not "×"

    # Tab reaches the delete button of a conversation that is not the current one (it was hidden, so
    # skipped), and deleting it leaves the focus in the message box.
    browser.execute_script("arguments[0].focus()", other.find_element(By.CSS_SELECTOR, ".open"))
    ActionChains(browser).send_keys(Keys.TAB).perform()
    assert focused(browser) == "BUTTON#.delete"
    assert accessible_name(browser, browser.switch_to.active_element) == 'Delete "Beta"'
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    browser.switch_to.alert.accept()
    assert [c["title"] for c in stored(browser)] == ["Alpha"]
    assert focused(browser) == "TEXTAREA#input."

    # The Inspect view, drawn: its text box, lists and tokens are named too.
    browser.find_element(By.ID, "view-inspect").click()
    assert browser.find_element(By.ID, "view-inspect").get_attribute("aria-pressed") == "true"
    browser.execute_script("arguments[0].value = 'x'", browser.find_element(By.ID, "inspect-text"))
    assert unnamed_controls(browser) == []
    assert page_errors(browser) == []


# --- what a model writes -------------------------------------------------------------------------------------
HOSTILE = [
    "<script>window.__pwned = 1</script>", "<img src=x onerror=\"window.__pwned = 2\">", "<svg onload=alert(3)>",
    "[click](javascript:alert(4))", "[x](https://example.org/\" onmouseover=\"alert(5))",
    "<a href=\"javascript:alert(6)\">a</a>", "```html\n<script>alert(7)</script>\n```", "`<iframe src=javascript:alert(8)>`",
    "<style>body { display: none }</style>", "**<b onclick=alert(9)>bold</b>**", "| <img src=x onerror=alert(10)> | b |\n|---|---|\n| c | d |",
    "> <script>alert(11)</script>", "- <details open ontoggle=alert(12)>", "[a](https://x.org/a_(b)\"onclick=alert(13))",
    "\\<script>alert(14)\\</script>", "<!--", "```js\nunclosed <img src=x onerror=alert(15)>",
]
FRAGMENTS = HOSTILE + ["*", "**", "_", "__", "~~", "`", "```", "\n", "\n\n", "- ", "1. ", "> ", "# ", "|", "---",
                       "[", "](", ")", "https://a.org/", "\\", "&", "\"", "'", "<", ">", " ", "x", "\u0000", "   "]
CHECK_DOM = """
const ALLOWED = {P: [], BR: [], STRONG: [], EM: [], DEL: [], CODE: ["class"], PRE: [], A: ["href", "target", "rel"],
  H1: [], H2: [], H3: [], H4: [], H5: [], H6: [], UL: [], OL: ["start"], LI: [], BLOCKQUOTE: [], TABLE: [],
  THEAD: [], TBODY: [], TR: [], TH: ["class"], TD: ["class"], HR: [], DIV: ["class"], SPAN: [],
  BUTTON: ["type", "class"]};
function violations(root) {
  const out = [];
  for (const el of root.querySelectorAll("*")) {
    const allowed = ALLOWED[el.tagName];
    if (!allowed) { out.push("element " + el.tagName); continue; }
    for (const a of el.attributes) {
      if (!allowed.includes(a.name)) out.push(el.tagName + " attribute " + a.name);
      else if (a.name === "href" && !/^https?:\\/\\//.test(a.value)) out.push("href " + a.value);
    }
  }
  return out;
}"""


def test_replies_full_of_html_render_as_text(standin, browser):
    """Streamed into the page: no element or attribute a model could inject, by the DOM the browser built
    (and the page's CSP reported nothing, so no markup was even tried)."""
    open_page(browser, standin.url)
    text = "\n\n".join(HOSTILE)
    browser.execute_script("arguments[0].value = arguments[1]", browser.find_element(By.ID, "input"), "SAY:" + text)
    browser.find_element(By.ID, "send").click()
    wait(browser, replied, what="the reply")
    body = browser.find_element(By.CSS_SELECTOR, "article.assistant .body")
    assert browser.execute_script(CHECK_DOM + "return violations(arguments[0]);", body) == []
    assert browser.execute_script("return window.__pwned === undefined")
    assert "<script>window.__pwned = 1</script>" in body.text and "<style>body { display: none }</style>" in body.text
    assert page_errors(browser) == []  # a blocked inline script or handler would be a CSP report here


def test_markdown_output_holds_only_its_own_tags_for_any_input(standin, browser):
    """Six hundred strings built from hostile fragments and Markdown markers, rendered and parsed by the
    browser's HTML parser: only the renderer's tags and attributes, hrefs only http(s)."""
    import random

    rng = random.Random(7)
    sources = ["".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 14))) for _ in range(600)]
    open_page(browser, standin.url)
    bad = browser.execute_async_script(CHECK_DOM + """
        const done = arguments[arguments.length - 1];
        import('/static/markdown.js').then(m => {
          const out = [];
          for (const s of arguments[0]) {
            const t = document.createElement('template');
            t.innerHTML = m.renderMarkdown(s);
            const v = violations(t.content);
            if (v.length) out.push([s, v]);
          }
          done(out);
        });""", sources)
    assert bad == []


def test_markdown_tables_follow_githubs_rule_and_backslashes_escape(standin, browser):
    open_page(browser, standin.url)
    pipe_line, table, escaped_pipe, escapes, in_code, link = render(browser, [
        "Count them with `ls | wc -l`\n---\nThen go on.",  # a paragraph, a rule, a paragraph: no table
        "| left | mid | right |\n|:--|:-:|--:|\n| a | **b** | `c` |",
        "| expr | meaning |\n|---|---|\n| `a \\| b` | a or b |",
        "2 \\* 3 \\* 4, snake\\_case, \\# not a heading, \\<b\\>, C:\\\\temp",
        "`a\\*b`",
        "[a\\]b](https://example.org/x)",
    ])
    assert pipe_line == "<p>Count them with <code>ls | wc -l</code></p>\n<hr>\n<p>Then go on.</p>"
    assert table == ('<table><thead><tr><th class="align-left">left</th><th class="align-center">mid</th>'
                     '<th class="align-right">right</th></tr></thead><tbody><tr><td class="align-left">a</td>'
                     '<td class="align-center"><strong>b</strong></td><td class="align-right"><code>c</code></td>'
                     '</tr></tbody></table>')
    assert escaped_pipe.endswith("<tbody><tr><td><code>a | b</code></td><td>a or b</td></tr></tbody></table>")
    assert escapes == "<p>2 * 3 * 4, snake_case, # not a heading, &lt;b&gt;, C:\\temp</p>"
    assert in_code == "<p><code>a\\*b</code></p>"  # a code span's text is as written
    assert link == '<p><a href="https://example.org/x" target="_blank" rel="noopener noreferrer">a]b</a></p>'



def test_latex_math_keeps_its_backslashes_beside_the_escapes(standin, browser):
    # review: the backslash escapes made `\(x^2\)` "(x^2)" and a matrix's `\\` row break "\": the page typesets
    # no math, so the LaTeX a model writes is shown as written (escapes elsewhere still work)
    open_page(browser, standin.url)
    spans, display = render(browser, [
        "If \\(a_1 * b_1\\) then \\[ \\{x \\mid x > 0\\} \\] and \\*lit\\*",
        "Solve:\n\\[\n\\begin{pmatrix} a & b \\\\ c & d \\end{pmatrix}\n\\]\nDone.",
    ])
    assert spans == "<p>If \\(a_1 * b_1\\) then \\[ \\{x \\mid x &gt; 0\\} \\] and *lit*</p>"
    assert display == ("<p>Solve:</p>\n<p>\\[<br>\\begin{pmatrix} a &amp; b \\\\ c &amp; d \\end{pmatrix}<br>\\]</p>"
                       "\n<p>Done.</p>")


# --- errors --------------------------------------------------------------------------------------------------
def test_errors_from_the_server_are_shown_and_the_page_goes_on(standin, browser):
    open_page(browser, standin.url)
    cases = [("HTTP500", "500 Internal Server Error", ""),
             ("HTTP400", "max_tokens: a test's refusal", ""),
             ("MIDERROR", "the engine failed: a test's error", "a partial reply"),
             ("DROP", "The request failed: the connection to the server was lost before the reply was complete.",
              "a partial reply")]
    for n, (ask, error, kept) in enumerate(cases, start=1):
        browser.find_element(By.ID, "input").send_keys(ask, Keys.ENTER)
        wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "article.assistant .error")) == n and idle(d),
             what=f"the error of {ask}")
        reply = browser.find_elements(By.CSS_SELECTOR, "article.assistant")[-1]
        assert reply.find_element(By.CSS_SELECTOR, ".error").text == error
        saved = stored(browser)[0]["messages"][-1]
        assert (saved["role"], saved["content"], saved["error"]) == ("assistant", kept, error)
        assert bool(saved["stats"]) == bool(kept)  # a reply cut short keeps its count of tokens
        assert reply.find_elements(By.CSS_SELECTOR, ".regenerate")
    # A dropped connection says "server unreachable" until the server answers again: it does, at once.
    wait(browser, lambda d: d.find_element(By.ID, "server-status").text == "ready", what="the status back to ready")
    browser.find_element(By.ID, "input").send_keys("SAY:still here", Keys.ENTER)
    wait(browser, lambda d: replied(d, 5) and d.find_elements(By.CSS_SELECTOR, "article.assistant .body")[-1].text
         == "still here", what="a reply after the errors")
    # A failed reply without text is left out of the next request; one with text goes in as it was.
    assert [m["content"] for m in standin.bodies[-1]["messages"] if m["role"] == "assistant"] == ["a partial reply"] * 2
    errors = [e for e in page_errors(browser)
              if "ERR_INCOMPLETE_CHUNKED_ENCODING" not in e]  # the browser's own note on the dropped stream
    assert errors == []


def test_a_refusal_from_the_real_server_shows_its_message(server, browser):
    open_page(browser, server, settings={"temperature": 5, "max_tokens": "3"})
    browser.find_element(By.ID, "input").send_keys("Hark", Keys.ENTER)
    wait(browser, replied, what="the refusal")
    api = httpx.post(f"{server}/v1/chat/completions", timeout=30, json={
        "model": "tiny", "messages": [{"role": "user", "content": "Hark"}], "temperature": 5, "max_tokens": 3})
    assert api.status_code == 400
    assert browser.find_element(By.CSS_SELECTOR, "article.assistant .error").text == api.json()["error"]["message"]
    open_settings(browser)
    set_field(browser, "temperature", "0")
    browser.find_element(By.CSS_SELECTOR, "article.assistant .regenerate").click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "article.assistant .stats") and idle(d), what="the reply")
    assert not browser.find_elements(By.CSS_SELECTOR, "article.assistant .error")
    assert stored(browser)[0]["messages"][1]["content"]


# --- the Inspect view against the API -------------------------------------------------------------------------
UNICODE = "Héllo wörld — 日本語 😀 ok"


def inspect_api(server, kind, **body):
    r = httpx.post(f"{server}/v1/inspect/{kind}", json=body, timeout=60)
    return r.status_code, r.json()


def run_inspect(driver, button, text):
    driver.execute_script("arguments[0].value = arguments[1]; document.getElementById('inspect-status').textContent = ''",
                          driver.find_element(By.ID, "inspect-text"), text)
    driver.find_element(By.ID, button).click()
    status = driver.find_element(By.ID, "inspect-status")
    wait(driver, lambda d: status.text not in ("", "computing\u2026"), timeout=30, what=f"{button}'s answer")
    return status.text


def percent_of(text: str) -> float:
    return float(text.rstrip("%").lstrip("<"))


def test_inspect_shows_the_apis_numbers_for_a_text_in_several_scripts(server, browser):
    open_page(browser, server)
    browser.find_element(By.ID, "view-inspect").click()
    code, att = inspect_api(server, "attention", text=UNICODE)
    assert code == 200
    n = len(att["tokens"])
    assert run_inspect(browser, "run-attention", UNICODE) == f"{n} tokens"
    strip = browser.find_elements(By.CSS_SELECTOR, "#attention-tokens .itok")
    assert [s.get_attribute("textContent") for s in strip] == [shown(t) for t in att["tokens"]]
    # The strip's shading titles: the middle layer's mean weights of the last token over every token.
    titles = [percent_of(s.get_attribute("title")) for s in strip]
    assert all(abs(t - 100 * w) <= 0.05 + 1e-9 for t, w in zip(titles, att["mean"][att["layer"]]))
    # Every layer's chips: the five most attended tokens, their names and percentages.
    rows = browser.find_elements(By.CSS_SELECTOR, "#attention-table tbody tr")
    assert len(rows) == att["n_layers"]
    for layer, row in enumerate(rows):
        chips = row.find_elements(By.CSS_SELECTOR, ".chip")
        ranked = sorted(enumerate(att["mean"][layer]), key=lambda jw: -jw[1])[:5]
        assert [int(c.get_attribute("data-token")) for c in chips] == [j for j, _ in ranked]
        for c, (j, w) in zip(chips, ranked):
            assert c.get_attribute("textContent") == f"{shown(att['tokens'][j])} {c.get_attribute('textContent').rpartition(' ')[2]}"
            assert abs(percent_of(c.get_attribute("textContent").rpartition(" ")[2]) - 100 * w) <= 0.05 + 1e-9
    # The heatmap: each cell's colour is the accent at the API's weight over white; above the diagonal, white.
    pixels = browser.execute_script("""
        const c = document.getElementById('attention-heatmap'), n = arguments[0], cell = c.width / n;
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, out = [];
        for (let i = 0; i < n; i++) { const row = [];
          for (let j = 0; j < n; j++) { const k = 4 * (Math.floor((i + 0.5) * cell) * c.width + Math.floor((j + 0.5) * cell));
            row.push([d[k], d[k + 1], d[k + 2]]); }
          out.push(row); }
        return out;""", n)
    for i in range(n):
        for j in range(n):
            w = att["matrix"][i][j] if j <= i else 0.0
            want = [255 * (1 - w) + c * w for c in (47, 95, 208)]
            assert all(abs(got - exp) <= 2.5 for got, exp in zip(pixels[i][j], want)), (i, j, pixels[i][j], want)

    # The logit lens: every cell's top token and percentage, and its top five in the title.
    code, lens = inspect_api(server, "lens", text=UNICODE, top=5)
    assert run_inspect(browser, "run-lens", UNICODE) == f"{n} tokens"
    cells = [[td for td in tr.find_elements(By.TAG_NAME, "td")] for tr in browser.find_elements(By.CSS_SELECTOR, "#lens-table tbody tr")]
    assert len(cells) == lens["n_layers"] + 1
    for r, row in enumerate(cells):
        for c, td in enumerate(row):
            texts, probs = lens["top_texts"][r][c], lens["top_probs"][r][c]
            assert td.get_attribute("textContent") == f"{shown(texts[0])} {round(100 * probs[0])}"
            lines = td.get_attribute("title").split("\n")
            assert [line.rpartition(" ")[0] for line in lines] == [shown(t) for t in texts]
            assert all(abs(percent_of(line.rpartition(" ")[2]) - 100 * p) <= 0.05 + 1e-9 for line, p in zip(lines, probs))

    # The next token: all ten rows.
    code, following = inspect_api(server, "next_token", text=UNICODE, top=10)
    assert run_inspect(browser, "run-next", UNICODE) == f"{n} tokens"
    rows = [[td.get_attribute("textContent") for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in browser.find_elements(By.CSS_SELECTOR, "#next-table tr")]
    assert [r[0] for r in rows] == [shown(t) for t in following["top_texts"]]
    for r, lp in zip(rows, following["top_logprobs"]):
        p = 100 * math.exp(lp)
        if p < 0.1 or p >= 99.95:
            assert r[2] == ("<0.1%" if p < 0.1 else "100%")
        else:
            assert abs(percent_of(r[2]) - p) <= 0.05 + 1e-9
    assert page_errors(browser) == []


def test_inspect_refuses_what_the_api_refuses_and_takes_the_longest_text(server, browser):
    open_page(browser, server)
    browser.find_element(By.ID, "view-inspect").click()
    # The longest text the endpoints take: as many words as fit in 256 tokens (BOS included).
    words = "Words, words, words. "
    text = words
    while inspect_api(server, "next_token", text=text + words, top=1)[0] == 200:
        text += words
    too_long = text + words
    for button, kind in [("run-attention", "attention"), ("run-lens", "lens"), ("run-next", "next_token")]:
        for bad in ["", "   \n ", too_long, "x" * 16001]:
            code, reply = inspect_api(server, kind, text=bad)
            assert code == 400
            assert run_inspect(browser, button, bad) == reply["error"]["message"]
            assert "error" in browser.find_element(By.ID, "inspect-status").get_attribute("class")
    code, att = inspect_api(server, "attention", text=text)
    n = len(att["tokens"])
    assert code == 200 and 240 < n <= 256
    assert run_inspect(browser, "run-attention", text) == f"{n} tokens"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#attention-tokens .itok")) == n
    assert browser.execute_script("return document.getElementById('attention-heatmap').width") == 2 * n  # 2 px a token
    assert page_errors(browser) == []


def test_inspect_tokens_and_lists_work_from_the_keyboard(server, browser):
    open_page(browser, server)
    browser.find_element(By.ID, "view-inspect").click()
    text = "To be, or not to be"
    assert run_inspect(browser, "run-attention", text).endswith("tokens")
    token = browser.find_elements(By.CSS_SELECTOR, "#attention-tokens .itok")[2]
    browser.execute_script("arguments[0].focus()", token)
    browser.switch_to.active_element.send_keys(Keys.ENTER)  # chooses the token, as a click does
    wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#attention-tokens .itok.sel").get_attribute("data-i") == "2",
         what="token 2 chosen with Enter")
    assert browser.switch_to.active_element.get_attribute("data-i") == "2"  # the focus stays on it
    browser.switch_to.active_element.send_keys(Keys.TAB, Keys.SPACE)  # the next token, with Space
    wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#attention-tokens .itok.sel").get_attribute("data-i") == "3",
         what="token 3 chosen with Space")
    code, att = inspect_api(server, "attention", text=text, token=3)
    chips = browser.find_elements(By.CSS_SELECTOR, "#attention-table tbody tr")[0].find_elements(By.CSS_SELECTOR, ".chip")
    assert [int(c.get_attribute("data-token")) for c in chips] == [j for j, _ in sorted(enumerate(att["mean"][0]), key=lambda jw: -jw[1])[:5]]
    # The head list by keyboard: the view is redrawn, the focus stays on the list.
    browser.execute_script("document.getElementById('attention-head').focus()")
    browser.switch_to.active_element.send_keys(Keys.ARROW_DOWN)
    wait_for(browser, lambda d: "head 0" in d.find_element(By.CSS_SELECTOR, ".heatmap figcaption").text, what="head 0")
    assert focused(browser) == "SELECT#attention-head."
    assert unnamed_controls(browser) == []
    assert page_errors(browser) == []
