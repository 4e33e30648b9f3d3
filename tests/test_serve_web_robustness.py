"""The chat page when things go wrong, in headless Chromium (as tests/test_serve_web.py drives it) against
a stand-in backend: the page's real files (llmkit.serve.web.web_routes) with a /v1/chat/completions that
streams the reply a test asks for, so crafted replies, a server that goes away and a reload mid-reply
take no model. Covered: a reply nested thousands of quotes deep and stored data of other shapes (the page
still draws, lists and connects), two tabs saving their conversations, storage nearly full, switching
conversation mid-reply, Copy without the clipboard API, links with underscores and parentheses, the
server going down and coming back, reloading mid-reply, emoji titles and right-to-left replies."""

import asyncio
import json
import threading
import time

import pytest

from test_serve_web import browser, page_errors, pytestmark, stored, wait  # noqa: F401 - fixture and skip mark

try:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
except ImportError:  # skipped by pytestmark
    pass


# --- the stand-in backend ------------------------------------------------------------------------------------
def sse(event: dict | str) -> str:
    return f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n"


def chunk(content: str | None = None, finish: str | None = None, logprobs: list | None = None) -> str:
    delta = {} if content is None else {"content": content}
    return sse({"object": "chat.completion.chunk", "model": "mock", "choices": [
        {"index": 0, "delta": delta, "logprobs": {"content": logprobs} if logprobs else None, "finish_reason": finish}]})


def token(piece: str) -> dict:
    """A piece of the reply as the API's logprobs give it, with five alternatives."""
    return {"token": piece, "logprob": -0.25, "bytes": None,
            "top_logprobs": [{"token": piece, "logprob": -0.25}] + [{"token": f"alt{k}", "logprob": -2.0 - k} for k in range(4)]}


async def reply_events(body: dict):
    """The reply to the last user message: "ECHO:text" streams the text back (in five-character tokens,
    with their probabilities when asked for), "SLOW" streams words until the client goes, anything else
    is "ok"."""
    last = body["messages"][-1]["content"]
    yield chunk("")
    if last == "SLOW":
        for i in range(2000):
            yield chunk(f"w{i} ")
            await asyncio.sleep(0.03)
        return
    text = last[5:] if last.startswith("ECHO:") else "ok"
    pieces = [text[i:i + 5] for i in range(0, len(text), 5)]
    for i in range(0, len(pieces), 50):
        group = pieces[i:i + 50]
        yield chunk("".join(group), logprobs=[token(p) for p in group] if body.get("logprobs") else None)
        await asyncio.sleep(0.002)
    yield chunk(finish="stop")
    yield sse("[DONE]")


class Backend:
    """The page's files and a scripted chat API on 127.0.0.1 (uvicorn on a thread); `stop` and a new
    Backend on the same port stand for a server that goes down and comes back. `chat`: another endpoint
    for /v1/chat/completions (default: reply_events' stream)."""

    def __init__(self, port: int = 0, chat=None, log_level: str = "warning"):
        import uvicorn
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, StreamingResponse
        from starlette.routing import Route

        from llmkit.serve.web import web_routes

        async def scripted(request: Request):
            return StreamingResponse(reply_events(await request.json()), media_type="text/event-stream")

        async def health(request: Request):
            return JSONResponse({"status": "ok"})

        async def models(request: Request):
            return JSONResponse({"object": "list", "data": [{"id": "mock", "object": "model"}]})

        app = Starlette(routes=web_routes() + [Route("/health", health), Route("/v1/models", models),
                                               Route("/v1/chat/completions", chat or scripted, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level,
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the stand-in backend did not start"
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def backend():
    server = Backend()
    yield server
    server.stop()


# --- helpers -------------------------------------------------------------------------------------------------
def open_page(driver, url, conversations=None, current=None, settings=None):
    """The page on a fresh localStorage (the given conversations in it), once it has found the server."""
    driver.get(f"{url}/")
    driver.execute_script("localStorage.clear(); localStorage.setItem('llmkit.settings', arguments[0]);"
                          "if (arguments[1] !== null) localStorage.setItem('llmkit.conversations', arguments[1]);"
                          "if (arguments[2] !== null) localStorage.setItem('llmkit.current', arguments[2]);",
                          json.dumps({"probabilities": False, **(settings or {})}),
                          None if conversations is None else json.dumps(conversations),
                          None if current is None else json.dumps(current))
    driver.get(f"{url}/")
    wait(driver, lambda d: status(d) == "ready", what="the page to find the server")
    driver.get_log("browser")  # what the page logged before this test's own steps


def status(driver) -> str:
    return driver.find_element(By.ID, "server-status").text


def send(driver, text):
    """Type a message and send it (set by script: chromedriver cannot type characters beyond the BMP)."""
    driver.execute_script("arguments[0].value = arguments[1]", driver.find_element(By.ID, "input"), text)
    driver.find_element(By.ID, "send").click()


def idle(driver) -> bool:
    return driver.find_element(By.ID, "send").is_displayed()


def replied(driver, count=1):
    """The count-th reply has finished (its stats or its error is shown, and Send is back)."""
    done = driver.find_elements(By.CSS_SELECTOR, "article.assistant .stats, article.assistant .error")
    return len(done) >= count and idle(driver)


def sidebar(driver) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#conversations .open")]


def conversation(cid, messages, title=None, updated=2):
    return {"id": cid, "title": title or cid, "system": "", "messages": messages, "created": 1, "updated": updated}


# --- the Markdown renderer -----------------------------------------------------------------------------------
def render(driver, sources: list[str]) -> list[str]:
    return driver.execute_async_script("""const done = arguments[arguments.length - 1];
        import('/static/markdown.js').then(m => done(arguments[0].map(s => {
            try { return m.renderMarkdown(s); } catch (e) { return 'THREW ' + e; } })));""", sources)


def test_markdown_nesting_is_capped(backend, browser):
    open_page(browser, backend.url)
    quote, nested_list = render(browser, [
        ">" * 12000 + " deep",  # one blockquote per '>' overflowed the stack
        "\n".join(" " * (2 * i) + "- item" for i in range(100)),
    ])
    assert quote.count("<blockquote>") == 32 and quote.endswith("&gt;" * (12000 - 32) + " deep</p>" + "</blockquote>" * 32)
    assert nested_list.count("<ul>") == 32 and nested_list.count("- item") == 100 - 32


def test_markdown_links_keep_their_urls(backend, browser):
    open_page(browser, backend.url)
    python, wiki, label = render(browser, [
        "[init](https://docs.python.org/3/reference/datamodel.html#object.__init__) and _this_",
        "[Python](https://en.wikipedia.org/wiki/Python_(programming_language)).",
        "[**bold** `x_y`](https://example.org/a_b_c) done_",
    ])
    assert python == ('<p><a href="https://docs.python.org/3/reference/datamodel.html#object.__init__" target="_blank" '
                      'rel="noopener noreferrer">init</a> and <em>this</em></p>')
    assert 'href="https://en.wikipedia.org/wiki/Python_(programming_language)"' in wiki and wiki.endswith("</a>.</p>")
    assert label == ('<p><a href="https://example.org/a_b_c" target="_blank" rel="noopener noreferrer">'
                     '<strong>bold</strong> <code>x_y</code></a> done_</p>')


# --- replies and stored data the page must survive ---------------------------------------------------------
def test_a_reply_nested_thousands_deep_streams_and_the_page_reloads(backend, browser):
    open_page(browser, backend.url)
    send(browser, "ECHO:" + ">" * 6000 + " the bottom")
    wait(browser, replied, what="the deep reply")
    body = browser.find_element(By.CSS_SELECTOR, "article.assistant .body")
    assert body.text.endswith("the bottom") and len(body.find_elements(By.TAG_NAME, "blockquote")) == 32
    browser.refresh()  # the page draws the stored reply, lists the conversation and connects
    wait(browser, lambda d: status(d) == "ready" and sidebar(d), what="the reloaded page")
    assert browser.find_element(By.CSS_SELECTOR, "article.assistant .body").text.endswith("the bottom")
    assert page_errors(browser) == []


STORED_SHAPES = {  # stored by another version of the page, by hand, or cut short: each must still load
    "null message": [None, {"role": "user", "content": "hello"}],
    "no content": [{"role": "user", "content": "hello"}, {"role": "assistant"}],
    "old stats": [{"role": "user", "content": "hello"},
                  {"role": "assistant", "content": "ok", "stats": {"completion": 3, "finish": "stop"}}],
    "odd fields": [{"role": "user", "content": "hello"},
                   {"role": "assistant", "content": "ok", "tokens": "x", "sources": 5, "stats": 7, "error": 404}],
}


@pytest.mark.parametrize("shape", STORED_SHAPES)
def test_stored_conversations_of_other_shapes_still_load(backend, browser, shape):
    fine = conversation("fine", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "there"}])
    odd = conversation("odd", STORED_SHAPES[shape], updated=3)
    open_page(browser, backend.url, [fine, odd], current="odd")
    assert sidebar(browser) == ["odd", "fine"]
    assert browser.find_element(By.CSS_SELECTOR, "article.user .body").text == "hello"
    if shape == "old stats":
        assert browser.find_element(By.CSS_SELECTOR, "article.assistant .stats").text == "~3 tokens"
    send(browser, "ECHO:still works")  # and the conversation goes on
    wait(browser, lambda d: idle(d) and d.find_elements(By.CSS_SELECTOR, "article.assistant .body")[-1].text
         == "still works", what="a reply after loading")
    assert page_errors(browser) == []


# --- storage -------------------------------------------------------------------------------------------------
def test_two_tabs_keep_each_others_conversations(backend, browser):
    open_page(browser, backend.url)
    tab_a = browser.current_window_handle
    browser.switch_to.new_window("tab")
    tab_b = browser.current_window_handle
    browser.get(f"{backend.url}/")
    wait(browser, lambda d: status(d) == "ready", what="the second tab")
    try:
        browser.switch_to.window(tab_a)
        send(browser, "ECHO:from tab A")
        wait(browser, replied, what="tab A's reply")
        browser.switch_to.window(tab_b)  # tab B hears of A's conversation without a reload...
        wait(browser, lambda d: sidebar(d) == ["ECHO:from tab A"], what="tab A's conversation in tab B")
        send(browser, "ECHO:from tab B")
        wait(browser, replied, what="tab B's reply")
        assert sorted(c["title"] for c in stored(browser)) == ["ECHO:from tab A", "ECHO:from tab B"]  # ...and keeps it
        browser.switch_to.window(tab_a)
        wait(browser, lambda d: sidebar(d) == ["ECHO:from tab B", "ECHO:from tab A"], what="B's conversation in A")

        # A deletion in one tab is not undone by the other tab's next save.
        browser.switch_to.window(tab_b)
        row = browser.find_elements(By.CSS_SELECTOR, "#conversations .conversation")[1]  # tab A's conversation
        ActionChains(browser).move_to_element(row).click(row.find_element(By.CSS_SELECTOR, ".delete")).perform()
        browser.switch_to.alert.accept()
        browser.switch_to.window(tab_a)
        wait(browser, lambda d: sidebar(d) == ["ECHO:from tab B"], what="the deletion to reach tab A")
        browser.find_element(By.CSS_SELECTOR, "#conversations .open").click()  # switching saves
        send(browser, "ECHO:more from A")
        wait(browser, lambda d: replied(d, 2), what="tab A's second reply")
        [kept] = stored(browser)
        assert [m["content"] for m in kept["messages"]] == ["ECHO:from tab B", "from tab B", "ECHO:more from A", "more from A"]
        browser.refresh()
        wait(browser, lambda d: status(d) == "ready", what="tab A reloaded")
        assert sidebar(browser) == ["ECHO:from tab B"]
    finally:
        browser.switch_to.window(tab_b)
        browser.close()
        browser.switch_to.window(tab_a)
    assert page_errors(browser) == []


def test_a_tab_that_missed_a_deletion_does_not_bring_it_back(backend, browser):
    """Tab A deletes X; tab B never heard (its storage event lost: busy, or back from the back-forward
    cache) and saves its old list: X stays deleted, because deletions are stored, not only remembered."""
    said = [{"role": "user", "content": "hello"}]
    x, y = conversation("x", said, "X", updated=5), conversation("y", said, "Y", updated=6)
    open_page(browser, backend.url, conversations=[x, y])
    titles = browser.execute_async_script("""const done = arguments[arguments.length - 1];
        import('/static/store.js').then(store => {
            const [x, y] = store.loadConversations();
            store.saveConversations([y], null, new Map([[x.id, x.updated]]));  // tab A deletes X
            store.saveConversations([x, y], null, new Map());                   // tab B's stale list
            const afterB = store.loadConversations().map(c => c.title);
            x.updated = 7;  // X continued in a tab since the deletion: a newer conversation, kept
            store.saveConversations([x, y], null, new Map());
            done([afterB, store.loadConversations().map(c => c.title).sort()]);
        });""")
    assert titles == [["Y"], ["X", "Y"]]


def test_storage_nearly_full_keeps_the_current_conversations_text(backend, browser):
    open_page(browser, backend.url, settings={"probabilities": True})
    # Fill localStorage to its quota with other data, then free room for a reply's text but not for its
    # token probabilities (about 15 times the text).
    browser.execute_script("""
        let size = 0;
        for (let step = 1 << 23; step >= 64; step >>= 1) {
          try { localStorage.setItem('other', 'x'.repeat(size + step)); size += step; } catch (e) {}
        }
        localStorage.setItem('other', 'x'.repeat(size - 6000));""")
    text = "The cat sat on the mat. " * 50
    send(browser, "ECHO:" + text)
    wait(browser, replied, what="the reply")
    assert browser.find_elements(By.CSS_SELECTOR, "article.assistant .toggle-tokens")  # shown on this page...
    notice = browser.find_element(By.ID, "notice")
    assert notice.is_displayed() and "probabilities are not" in notice.text
    [saved] = stored(browser)
    assert saved["messages"][1]["content"] == text and "tokens" not in saved["messages"][1]  # ...not stored
    browser.refresh()
    wait(browser, lambda d: status(d) == "ready", what="the reloaded page")
    assert browser.find_element(By.CSS_SELECTOR, "article.assistant .body").text == text.strip()
    browser.execute_script("localStorage.clear()")
    assert page_errors(browser) == []


def test_reloading_mid_reply_keeps_it_marked_as_interrupted(backend, browser):
    open_page(browser, backend.url)
    send(browser, "SLOW")
    wait(browser, lambda d: "w3" in d.find_element(By.CSS_SELECTOR, "article.assistant .body").text, what="the reply")
    browser.refresh()
    wait(browser, lambda d: status(d) == "ready", what="the reloaded page")
    [saved] = stored(browser)
    assert saved["messages"][1]["content"].startswith("w0 w1 w2 w3")
    assert saved["messages"][1]["error"].startswith("Interrupted: the page was reloaded")
    assert browser.find_element(By.CSS_SELECTOR, "article.assistant .error").text.startswith("Interrupted")
    assert browser.find_elements(By.CSS_SELECTOR, "article.assistant .regenerate")
    assert page_errors(browser) == []


# --- the page in use ---------------------------------------------------------------------------------------
def test_switching_conversation_mid_reply_leaves_edit_and_regenerate(backend, browser):
    open_page(browser, backend.url)
    send(browser, "ECHO:first")
    wait(browser, replied, what="the first reply")
    browser.find_element(By.ID, "new-chat").click()
    send(browser, "SLOW")
    wait(browser, lambda d: "w3" in d.find_element(By.CSS_SELECTOR, "article.assistant .body").text, what="the reply")
    browser.find_element(By.CSS_SELECTOR, "#conversations .conversation:not(.current) .open").click()
    wait(browser, lambda d: idle(d) and d.find_elements(By.CSS_SELECTOR, "article.user .edit")
         and d.find_elements(By.CSS_SELECTOR, "article.assistant .regenerate"),
         timeout=5, what="Edit and Regenerate in the conversation switched to")
    assert browser.find_element(By.CSS_SELECTOR, "article.assistant .body").text == "first"
    assert page_errors(browser) == []


def test_copy_works_without_the_clipboard_api(backend, browser):
    open_page(browser, backend.url)
    send(browser, "ECHO:Here:\n```python\nprint('hi')\n```")
    wait(browser, replied, what="the reply")
    # A server on a LAN address over http is no secure context: the page has no navigator.clipboard.
    browser.execute_script("Object.defineProperty(Navigator.prototype, 'clipboard', {get: () => undefined})")
    copy = browser.find_element(By.CSS_SELECTOR, ".copy-code")
    copy.click()
    wait(browser, lambda d: copy.text != "Copy", timeout=3, what="the Copy button to answer")
    assert copy.text in ("Copied", "Copy failed \u2014 select the text")
    if copy.text != "Copied":  # then the code is selected, for the user to copy
        assert browser.execute_script("return window.getSelection().toString()") == "print('hi')"
    assert page_errors(browser) == []


def test_titles_do_not_cut_an_emoji_in_two(backend, browser):
    open_page(browser, backend.url)
    send(browser, "\U0001F600" * 70)
    wait(browser, replied, what="the reply")
    assert stored(browser)[0]["title"] == "\U0001F600" * 60  # not 30 and a half
    assert page_errors(browser) == []


def test_right_to_left_replies_read_right_to_left(backend, browser):
    open_page(browser, backend.url)
    send(browser, "ECHO:\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645")
    wait(browser, replied, what="the Arabic reply")
    direction = "return getComputedStyle(arguments[0]).direction"
    [user, reply] = browser.find_elements(By.CSS_SELECTOR, "article .body")
    assert browser.execute_script(direction, reply) == "rtl"
    assert browser.execute_script(direction, user) == "ltr"  # its first letters are "ECHO"
    assert browser.find_element(By.ID, "input").get_attribute("dir") == "auto"


def test_a_server_that_goes_away_is_reported_and_found_again(browser):
    server = Backend()
    try:
        open_page(browser, server.url)
        server.stop()
        send(browser, "ECHO:anyone there?")
        wait(browser, replied, what="the failed request")
        error = browser.find_element(By.CSS_SELECTOR, "article.assistant .error").text
        assert error == "The request failed: the server could not be reached."
        assert status(browser) == "server unreachable"
        server = Backend(server.port)  # back on the same address: the page finds it by itself
        wait(browser, lambda d: status(d) == "ready", timeout=10, what="the page to find the server again")
        browser.find_element(By.CSS_SELECTOR, "article.assistant .regenerate").click()
        wait(browser, replied, what="the reply once the server is back")
        assert browser.find_element(By.CSS_SELECTOR, "article.assistant .body").text == "anyone there?"
    finally:
        server.stop()
    # The browser logs the failed fetches themselves (net::ERR_CONNECTION_REFUSED); nothing else.
    assert [e for e in page_errors(browser) if "ERR_CONNECTION_REFUSED" not in e] == []
