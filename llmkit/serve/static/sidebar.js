// The conversation list in the sidebar: the conversations that have messages, most recently changed
// first. Each row opens its conversation and has Delete (×); the current one also has Rename (✎) and
// Export (⤓), which act on the conversation in use (the other rows keep to two tab stops each, so a
// long list stays quick to go through with Tab). Titles only ever go in via textContent.

const MAX_TITLE = 200; // characters a renamed title keeps (automatic titles keep 60)

export class ConversationList {
  // actions: state() -> [conversations, current]; open(c); remove(c); exportOne(c); rename(id, text,
  // maxLength), which stores the new title (empty: the automatic one again); refocus(), for a focus
  // that had nowhere to go (the conversation renamed was deleted in another tab meanwhile).
  constructor(element, actions) {
    this.element = element;
    this.actions = actions;
    this.renaming = null; // the id whose title is being edited: the list is not redrawn under the editor
    this.stale = false; // a redraw was put off while it was
  }

  render() {
    this.stale = this.renaming !== null;
    if (this.stale) return; // redrawn when the rename ends
    const [conversations, current] = this.actions.state();
    this.element.replaceChildren();
    const shown = conversations.filter((c) => c.messages.length).sort((a, b) => b.updated - a.updated);
    for (const conversation of shown) this.element.append(this.row(conversation, conversation === current));
  }

  row(conversation, isCurrent) {
    const title = conversation.title || "(untitled)";
    const row = document.createElement("div");
    row.className = "conversation" + (isCurrent ? " current" : "");
    row.dataset.id = conversation.id;
    const open = button("open", title);
    if (isCurrent) open.setAttribute("aria-current", "true");
    open.dir = "auto";
    open.title = new Date(conversation.updated).toLocaleString();
    open.addEventListener("click", () => this.actions.open(conversation));
    row.append(open);
    if (isCurrent) {
      const rename = button("rename", "\u270e", "Rename this conversation", `Rename "${title}"`);
      rename.addEventListener("click", () => this.startRename(conversation));
      const save = button("export", "\u2913", "Export this conversation to a JSON file", `Export "${title}"`);
      save.addEventListener("click", () => this.actions.exportOne(conversation));
      row.append(rename, save);
    }
    // Its text is a bare "×": a screen reader would read "times", so the name says what it deletes.
    const remove = button("delete", "\u00d7", "Delete this conversation", `Delete "${title}"`);
    remove.addEventListener("click", () => this.actions.remove(conversation));
    row.append(remove);
    return row;
  }

  // The row's title becomes a text box: Enter (or leaving it) keeps the new title, Esc keeps the old.
  startRename(conversation) {
    const row = this.rowOf(conversation.id);
    if (!row || this.renaming !== null) return;
    const id = conversation.id;
    const editor = document.createElement("input");
    editor.type = "text";
    editor.className = "title-editor";
    editor.dir = "auto";
    editor.maxLength = MAX_TITLE;
    editor.value = conversation.title;
    editor.placeholder = "empty: from the first message";
    editor.setAttribute("aria-label", `New title for "${conversation.title || "(untitled)"}"`);
    row.classList.add("renaming");
    row.replaceChildren(editor);
    this.renaming = id;
    let done = false;
    const finish = (keep, fromKeyboard) => {
      if (done) return; // removing the focused box may fire its blur as well
      done = true;
      this.renaming = null;
      if (keep) this.actions.rename(id, editor.value, MAX_TITLE);
      if (fromKeyboard) {
        this.render();
        if (!this.focus(id, ".rename")) this.actions.refocus();
        return;
      }
      // Left with a click: only this row is redrawn (in place; the list is sorted again at its next
      // redraw), so that the row or button clicked is still there to take the click.
      const [conversations, current] = this.actions.state();
      const now = conversations.find((c) => c.id === id);
      if (now && now.messages.length && !this.stale) row.replaceWith(this.row(now, now === current));
      else this.render();
    };
    editor.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.isComposing) {
        event.preventDefault();
        finish(true, true);
      } else if (event.key === "Escape") {
        event.stopPropagation(); // the page's Esc stops a reply being generated: not this one's job
        event.preventDefault();
        finish(false, true);
      }
    });
    editor.addEventListener("blur", () => finish(true, false)); // the focus is going elsewhere: leave it
    editor.focus();
    editor.select();
  }

  rowOf(id) {
    return [...this.element.children].find((row) => row.dataset.id === id) || null;
  }

  focus(id, selector) {
    const row = this.rowOf(id);
    const target = row && row.querySelector(selector);
    if (target) target.focus();
    return Boolean(target);
  }
}

function button(className, text, title, label) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = text;
  if (title) b.title = title;
  if (label) b.setAttribute("aria-label", label);
  return b;
}
