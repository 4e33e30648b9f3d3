"""Managing conversations on the chat page, in headless Chromium (as tests/test_serve_web.py drives it)
against the stand-in backend of tests/test_serve_web_robustness.py: renaming one (kept across a reload,
from the keyboard, Esc undoes), exporting one or all to the documented JSON file (the real download,
read from disk), importing such a file back (the round trip renders the same), bad files (not JSON,
another shape, an unknown version, a bad field, too large) refused with a message that changes nothing,
and an imported file full of HTML drawn as text."""

import datetime
import json
import re

import httpx

from test_serve_web import browser, page_errors, pytestmark, stored, wait  # noqa: F401 - fixture and skip mark
from test_serve_web_audit import CHECK_DOM, HOSTILE, accessible_name, focused, open_settings, unnamed_controls
from test_serve_web_robustness import backend, conversation, open_page, replied, sidebar, status  # noqa: F401 - fixture

try:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
except ImportError:  # skipped by pytestmark
    pass

FORMAT = "llmkit-conversations"
SAID = [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "**Paris**."}]
# A conversation with every field the page stores: a reply with code, a table, stats, sources and token
# probabilities, and a reply cut short.
TOKENS = [["Here", -0.1, [["Here", -0.1], ["There", -2.3]], 0], [":", -0.7, [[";", -0.5], [":", -0.7]], 1]]
RICH = [
    {"role": "user", "content": "Show me\n  some code"},
    {"role": "assistant", "content": "Here:\n\n```python\nprint('hi')\n```\n\n| a | b |\n|---|---|\n| 1 | `2` |",
     "tokens": TOKENS, "showTokens": False,
     "stats": {"completion": 12, "exact": True, "finish": "length", "prompt": 20, "cached": 4, "ttftS": 0.25,
               "tokensPerS": 31.5, "truncated": 1},
     "sources": [{"n": 1, "file": "hamlet.txt", "line": 3, "start": 0, "end": 10, "text": "To be, or not to be"}]},
    {"role": "user", "content": "again"},
    {"role": "assistant", "content": "Part", "error": "Interrupted: the page was reloaded.",
     "stats": {"completion": 1, "exact": False, "finish": "stopped", "prompt": None, "ttftS": None}},
]


def without_view_state(c: dict) -> dict:
    return {**c, "messages": [{k: v for k, v in m.items() if k != "showTokens"} for m in c["messages"]]}


def allow_downloads(driver, folder):
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(folder)})


def download(driver, folder, click):
    """Clicks the button, and returns the file it downloaded into `folder` (new, and complete: Chromium
    writes NAME.crdownload and renames it when done)."""
    before = set(folder.iterdir())
    click()
    return wait(driver, lambda d: ([p for p in folder.iterdir() if p not in before and p.suffix == ".json"] or [None])[0],
                what="the download")


def row(driver, title):
    return next(r for r in driver.find_elements(By.CSS_SELECTOR, "#conversations .conversation")
                if [o.text for o in r.find_elements(By.CSS_SELECTOR, ".open")] == [title])  # not the one being renamed


def notice(driver) -> str:
    element = driver.find_element(By.ID, "notice")
    return element.text if element.is_displayed() else ""


def choose_file(driver, path):
    """What the file picker does when a file is chosen (the picker itself is the browser's)."""
    driver.execute_script("const n = document.getElementById('notice'); n.hidden = true; n.textContent = ''")
    driver.find_element(By.ID, "import-file").send_keys(str(path))
    return wait(driver, notice, what="the import's message")


def drawn(driver) -> list:
    """The conversation on screen as drawn: each message's role, body markup and footer text."""
    return [(a.get_attribute("class"), a.find_element(By.CSS_SELECTOR, ".body").get_attribute("innerHTML"),
             a.find_element(By.CSS_SELECTOR, ".meta").text) for a in driver.find_elements(By.CSS_SELECTOR, "#messages article")]


def open_conversation(driver, title):
    row(driver, title).find_element(By.CSS_SELECTOR, ".open").click()
    wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, ".conversation.current .open").text == title,
         what=f'"{title}" on screen')


# --- renaming ------------------------------------------------------------------------------------------------
def test_rename_is_kept_across_a_reload_and_works_from_the_keyboard(backend, browser):
    open_page(browser, backend.url, [conversation("a", SAID, "Alpha", 3), conversation("b", SAID, "Beta", 2)], current="a")
    current, other = browser.find_elements(By.CSS_SELECTOR, "#conversations .conversation")
    # Rename and Export act on the conversation in use: the other rows keep to open and delete.
    assert [b.get_attribute("class") for b in current.find_elements(By.TAG_NAME, "button")] == ["open", "rename", "export", "delete"]
    assert [b.get_attribute("class") for b in other.find_elements(By.TAG_NAME, "button")] == ["open", "delete"]
    assert accessible_name(browser, current.find_element(By.CSS_SELECTOR, ".rename")) == 'Rename "Alpha"'
    assert accessible_name(browser, current.find_element(By.CSS_SELECTOR, ".export")) == 'Export "Alpha"'

    # From the keyboard: Tab from the title reaches Rename, Enter opens the title in a text box (all of
    # it selected, so typing replaces it), Enter keeps the new title and gives the focus back to Rename.
    browser.execute_script("arguments[0].focus()", current.find_element(By.CSS_SELECTOR, ".open"))
    ActionChains(browser).send_keys(Keys.TAB).perform()
    assert focused(browser) == "BUTTON#.rename"
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    assert focused(browser) == "INPUT#.title-editor"
    editor = browser.switch_to.active_element
    assert editor.get_attribute("value") == "Alpha" and accessible_name(browser, editor) == 'New title for "Alpha"'
    assert unnamed_controls(browser) == []
    ActionChains(browser).send_keys("Capitals <i>of</i>   Europe", Keys.ENTER).perform()
    assert focused(browser) == "BUTTON#.rename"
    assert sidebar(browser) == ["Capitals <i>of</i> Europe", "Beta"]  # text, not markup; spaces tidied
    assert accessible_name(browser, browser.switch_to.active_element) == 'Rename "Capitals <i>of</i> Europe"'

    # Esc keeps the old title (and stops nothing); leaving the box keeps the new one, and the click that
    # left it does what it does (here: opens the other conversation).
    ActionChains(browser).send_keys(Keys.ENTER, "Never kept", Keys.ESCAPE).perform()
    assert sidebar(browser) == ["Capitals <i>of</i> Europe", "Beta"] and focused(browser) == "BUTTON#.rename"
    ActionChains(browser).send_keys(Keys.ENTER, "Capitals").perform()
    row(browser, "Beta").find_element(By.CSS_SELECTOR, ".open").click()
    assert sidebar(browser) == ["Capitals", "Beta"]
    assert browser.find_element(By.CSS_SELECTOR, ".conversation.current .open").text == "Beta"

    browser.refresh()
    wait(browser, lambda d: status(d) == "ready", what="the reloaded page")
    assert sidebar(browser) == ["Capitals", "Beta"]
    assert {c["id"]: c["title"] for c in stored(browser)} == {"a": "Capitals", "b": "Beta"}
    open_conversation(browser, "Capitals")

    # A title given by hand stays when the first message is edited; an empty one is the automatic one again.
    browser.find_element(By.CSS_SELECTOR, "article.user .edit").click()
    editor = browser.switch_to.active_element
    editor.clear()
    editor.send_keys("ECHO:Which city?", Keys.ENTER)
    wait(browser, replied, what="the reply to the edited message")
    assert sidebar(browser) == ["Capitals", "Beta"]
    browser.find_element(By.CSS_SELECTOR, ".conversation.current .rename").click()
    ActionChains(browser).send_keys(Keys.BACKSPACE, Keys.ENTER).perform()
    assert sidebar(browser) == ["ECHO:Which city?", "Beta"]
    assert page_errors(browser) == []


# --- export --------------------------------------------------------------------------------------------------
def test_export_one_and_all_write_the_documented_file(backend, browser, tmp_path):
    rich, plain = conversation("r", RICH, "Rich one: code & tables", 5), conversation("p", SAID, "Plain", 4)
    rich["system"] = "Answer briefly."
    open_page(browser, backend.url, [plain, rich], current="r")
    allow_downloads(browser, tmp_path)
    started = datetime.datetime.now(datetime.timezone.utc)

    one = download(browser, tmp_path, lambda: browser.find_element(By.CSS_SELECTOR, ".conversation.current .export").click())
    assert one.name == "llmkit-chat-rich-one-code-tables.json"
    data = json.loads(one.read_text())
    assert set(data) == {"format", "version", "exported", "conversations"}
    assert (data["format"], data["version"]) == (FORMAT, 1)
    exported = datetime.datetime.fromisoformat(data["exported"].replace("Z", "+00:00"))
    assert abs((exported - started).total_seconds()) < 60
    assert data["conversations"] == [without_view_state(rich)]  # every field, as stored, minus the view

    open_settings(browser)
    everything = download(browser, tmp_path, lambda: browser.find_element(By.ID, "export-all").click())
    assert everything.name == f"llmkit-chats-{datetime.date.today().isoformat()}.json"
    data = json.loads(everything.read_text())
    assert (data["format"], data["version"]) == (FORMAT, 1)
    assert data["conversations"] == [without_view_state(rich), plain]  # newest first, as listed
    assert page_errors(browser) == []


# --- import --------------------------------------------------------------------------------------------------
def test_import_round_trips_what_export_wrote(backend, browser, tmp_path):
    rich, plain = conversation("r", RICH, "Rich", 5), conversation("p", SAID, "Plain", 4)
    open_page(browser, backend.url, [plain, rich], current="r")
    allow_downloads(browser, tmp_path)
    before = {}
    for title in ("Plain", "Rich"):
        open_conversation(browser, title)
        before[title] = drawn(browser)
    open_settings(browser)
    file = download(browser, tmp_path, lambda: browser.find_element(By.ID, "export-all").click())
    kept = stored(browser)

    browser.execute_script("localStorage.clear()")
    browser.refresh()
    wait(browser, lambda d: status(d) == "ready", what="the page with nothing stored")
    assert sidebar(browser) == []
    open_settings(browser)
    assert choose_file(browser, file) == f'Imported 2 conversations from "{file.name}".'
    assert "info" in browser.find_element(By.ID, "notice").get_attribute("class")
    assert sidebar(browser) == ["Rich", "Plain"]
    by_id = lambda cs: sorted((without_view_state(c) for c in cs), key=lambda c: c["id"])  # noqa: E731
    assert by_id(stored(browser)) == by_id(kept)  # ids, times, titles, messages and all they carry
    for title in ("Plain", "Rich"):
        open_conversation(browser, title)
        assert drawn(browser) == before[title]
    browser.find_element(By.CSS_SELECTOR, "article.assistant .toggle-tokens").click()  # the probabilities came back
    assert [s.text for s in browser.find_elements(By.CSS_SELECTOR, ".tok")] == ["Here", ":"]

    # The same file again adds nothing; after a deletion, it brings the deleted conversation back.
    assert choose_file(browser, file) == f'"{file.name}" holds no conversations to add (left out: 2 already here): nothing was imported.'
    assert len(stored(browser)) == 2
    ActionChains(browser).move_to_element(row(browser, "Plain")).click(
        row(browser, "Plain").find_element(By.CSS_SELECTOR, ".delete")).perform()
    browser.switch_to.alert.accept()
    assert sidebar(browser) == ["Rich"]
    assert choose_file(browser, file) == f'Imported 1 conversation from "{file.name}" (left out: 1 already here).'
    browser.refresh()  # kept: saving does not drop it as the deleted one
    wait(browser, lambda d: status(d) == "ready", what="the reloaded page")
    assert sidebar(browser) == ["Rich", "Plain"]

    # What another tool may write: messages, each with its role and content, and nothing else.
    minimal = tmp_path / "minimal.json"
    minimal.write_text(json.dumps({"format": FORMAT, "version": 1, "conversations": [
        {"messages": [{"role": "user", "content": " Written\nby hand "}, {"role": "assistant", "content": "*Yes*"}]}]}))
    assert choose_file(browser, minimal) == 'Imported 1 conversation from "minimal.json".'
    assert sidebar(browser)[0] == "Written by hand"  # the automatic title, newest (imported now)
    open_conversation(browser, "Written by hand")
    assert browser.find_element(By.CSS_SELECTOR, "article.assistant .body").get_attribute("innerHTML") == "<p><em>Yes</em></p>"
    assert page_errors(browser) == []


def exported(*conversations, **fields) -> str:
    return json.dumps({"format": FORMAT, "version": 1, "exported": "2025-01-01T00:00:00.000Z",
                       "conversations": list(conversations), **fields})


BAD_FILES = [  # name, contents, what the message says
    ("notes.txt", "hello, not JSON", "it is not JSON ("),
    ("list.json", "[]", 'it is not an llmkit conversations file (its "format" must be "llmkit-conversations")'),
    ("future.json", exported(version=2),
     "it is version 2 of the llmkit conversations format, and this page reads version 1 only"),
    ("unversioned.json", json.dumps({"format": FORMAT, "conversations": []}), 'it has no "version"'),
    ("role.json", exported(conversation("x", [SAID[0], {"role": "system", "content": "hi"}])),
     'conversations[0].messages[1].role must be "user" or "assistant" (it is "system")'),
    # Checked whole before anything is added: the good first conversation is not imported either.
    ("half.json", exported(conversation("x", SAID), conversation("y", [{"role": "user", "content": 5}])),
     "conversations[1].messages[0].content must be a string (it is 5)"),
    ("tokens.json", exported(conversation("x", [SAID[0], {**SAID[1], "tokens": [["a", "b"]]}])),
     "conversations[0].messages[1].tokens[0] must be [text, log-probability"),
    ("huge.json", exported(conversation("x", SAID)) + " " * (21 << 20),
     "it is 21.0 MB, and the page imports files up to 20.0 MB"),
]


def test_a_bad_file_is_refused_by_name_and_changes_nothing(backend, browser, tmp_path):
    for name in ("sidebar.js", "transfer.js", "message_parts.js"):  # the new modules, served as the others are
        r = httpx.get(f"{backend.url}/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript"), name
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert not re.search(r'(src|href)="(https?:)?//|from\s+"(https?:)?//|url\((https?:)?//', r.text), name
    open_page(browser, backend.url, [conversation("a", SAID, "Alpha", 3)], current="a")
    open_settings(browser)
    assert unnamed_controls(browser) == []
    # Import is reached with Tab from Export all and opens the file picker (stubbed: it is the browser's).
    browser.execute_script("document.getElementById('import-file').click = () => { window.__picker = true; }")
    browser.execute_script("document.getElementById('export-all').focus()")
    ActionChains(browser).send_keys(Keys.TAB).perform()
    assert focused(browser) == "BUTTON#import." and browser.switch_to.active_element.text == "Import\u2026"
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    assert browser.execute_script("return window.__picker === true")

    before = browser.execute_script("return JSON.stringify(Object.entries(localStorage).sort())")
    shown = drawn(browser)
    for name, contents, message in BAD_FILES:
        path = tmp_path / name
        path.write_text(contents)
        said = choose_file(browser, path)
        assert said.startswith(f'"{name}" was not imported: ') and said.endswith(". Nothing was changed."), said
        assert message in said, said
        assert browser.execute_script("return JSON.stringify(Object.entries(localStorage).sort())") == before, name
        assert sidebar(browser) == ["Alpha"] and drawn(browser) == shown, name
    assert "info" not in browser.find_element(By.ID, "notice").get_attribute("class")
    assert browser.find_element(By.ID, "notice").get_attribute("role") == "alert"  # read out

    # A good file that does not fit in the browser's storage (filled to its quota by other data).
    browser.execute_script("""
        let size = 0;
        for (let step = 1 << 23; step >= 64; step >>= 1) {
          try { localStorage.setItem('other', 'x'.repeat(size + step)); size += step; } catch (e) {}
        }""")
    saved = "return [localStorage.getItem('llmkit.conversations'), JSON.parse(localStorage.getItem('llmkit.deleted') || '{}')]"
    kept = browser.execute_script(saved)
    path = tmp_path / "big.json"
    path.write_text(exported(conversation("x", [{"role": "user", "content": "many words " * 10_000}])))
    said = choose_file(browser, path)
    assert "do not fit in the browser's storage" in said and said.endswith("Nothing was changed."), said
    assert browser.execute_script(saved) == kept
    assert sidebar(browser) == ["Alpha"] and drawn(browser) == shown
    browser.execute_script("localStorage.removeItem('other')")
    assert page_errors(browser) == []


def test_an_imported_file_full_of_html_is_drawn_as_text(backend, browser, tmp_path):
    text = "\n\n".join(HOSTILE)
    hostile = {
        "id": "<b>id</b>", "title": HOSTILE[1], "system": HOSTILE[0], "created": 1, "updated": 9,
        "messages": [
            {"role": "user", "content": text},
            {"role": "assistant", "content": text, "error": HOSTILE[2],
             "stats": {"completion": 3, "exact": True, "finish": HOSTILE[0]},
             "sources": [{"n": HOSTILE[5], "file": HOSTILE[1], "line": 1, "text": HOSTILE[0]}],
             "tokens": [[h, -0.5, [[h, -0.5], [HOSTILE[0], -1.5]], 0] for h in HOSTILE]},
        ],
    }
    path = tmp_path / "<img src=x onerror=window.__pwned=99>.json"
    path.write_text(exported(hostile))
    open_page(browser, backend.url, [conversation("a", SAID, "Alpha", 3)], current="a")
    assert choose_file(browser, path) == f'Imported 1 conversation from "{path.name}".'
    assert sidebar(browser) == [HOSTILE[1], "Alpha"]
    open_conversation(browser, HOSTILE[1])

    user, reply = browser.find_elements(By.CSS_SELECTOR, "#messages article .body")
    assert user.text == text and browser.execute_script("return arguments[0].children.length", user) == 0
    # The reply: the renderer's own tags only; then its sources and error, as text in the page's elements.
    assert browser.execute_script(CHECK_DOM + """
        const copy = arguments[0].cloneNode(true);
        copy.querySelectorAll('.sources').forEach((e) => e.remove());
        return violations(copy);""", reply) == []
    assert "<script>window.__pwned = 1</script>" in reply.text and HOSTILE[2] in reply.text
    assert browser.execute_script("""return [...arguments[0].querySelectorAll('.sources *')]
        .map((e) => e.tagName + [...e.attributes].map((a) => ' ' + a.name).join(''))""", reply) == \
        ["DIV class", "DETAILS", "SUMMARY", "PRE"]
    # The probabilities view: a span of text per token, and the popup's alternatives as text too.
    browser.find_element(By.CSS_SELECTOR, "article.assistant .toggle-tokens").click()
    tokens = browser.find_element(By.CSS_SELECTOR, "article.assistant .body")
    assert browser.execute_script("return [...arguments[0].querySelectorAll('.tok')].map((s) => s.textContent)",
                                  tokens) == HOSTILE
    assert browser.execute_script("""return [...arguments[0].querySelectorAll('*')]
        .filter((e) => !e.closest('.sources, .error') && !(e.matches('span.tok') && !e.children.length))
        .map((e) => e.outerHTML)""", tokens) == []
    browser.execute_script("arguments[0].focus()", tokens.find_element(By.CSS_SELECTOR, ".tok"))
    popup = browser.find_element(By.ID, "token-popup")
    assert popup.is_displayed() and HOSTILE[0].replace(" ", "\u2423") in popup.text  # spaces shown as \u2423
    assert browser.execute_script("""return [...document.querySelectorAll('#token-popup *')]
        .filter((e) => !['DIV', 'TABLE', 'TBODY', 'TR', 'TD', 'SPAN'].includes(e.tagName)).length""") == 0

    assert browser.execute_script("""return document.querySelectorAll(
        'img, svg, iframe, object, embed, style, details[open], a[href^="javascript"]').length""") == 0
    assert browser.execute_script("return document.scripts.length") == 1  # the page's own app.js
    assert browser.execute_script("return window.__pwned === undefined")
    assert page_errors(browser) == []  # a blocked inline script or handler would be a CSP report here
