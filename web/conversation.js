// One conversation, a room or a private conversation with one user: its messages and notices
// in order, the list element showing them, and the tab that selects it.
//
// Messages are kept in message-id order, whatever order they arrive in (live events, a backlog,
// pages of history), and each id is shown once. Notices have no id: each is placed after the
// newest message present when it was made, so older messages fetched later go above it.

import { h, fold, paint, timeElement } from './util.js';

/** The map key of a conversation: rooms are already lower case, user names are folded. */
export function keyOf(kind, name) {
  return `${kind}:${kind === 'dm' ? fold(name) : name}`;
}

// Ids are u64 on the wire; JSON numbers are exact up to 2^53, far more messages than any
// server will store, so they are compared as numbers.
function compare(a, b) {
  return a[0] - b[0] || a[1] - b[1];
}

export class Conversation {
  constructor(kind, name, me) {
    this.kind = kind;
    this.name = name;
    this.me = me;
    this.key = keyOf(kind, name);
    // Sorted by `order`: [message id, 0] for a message, [newest id then, n] for a notice.
    this.items = [];
    this.ids = new Set();
    this.notices = 0;
    this.unread = 0;
    // True once `history` answered with an empty page: nothing older exists.
    this.exhausted = false;
    this.loading = false;
    // The newest message id shown when the connection was lost (0 if none), until the gap is
    // filled; null when there is no gap.
    this.catchUpFrom = null;
    this.draft = '';
    this.sending = false;
    // Distance from the bottom of the timeline when last left; null means at the bottom.
    this.scroll = null;
    this.list = h('ol', { class: 'messages', role: 'log', 'aria-label': this.title });
    this.tab = h('button', { class: 'tab', type: 'button', role: 'tab', 'aria-controls': 'timeline', 'data-tab': `${kind}:${name}` });
    if (kind === 'dm') paint(this.tab, name);
    this.renderTab(false);
  }

  /** How the conversation is named for people: "#rust", "bob". */
  get title() {
    return this.kind === 'room' ? `#${this.name}` : this.name;
  }

  /** The fields that name this conversation in a `history` request. */
  get target() {
    return this.kind === 'room' ? { room: this.name } : { with: this.name };
  }

  get oldestId() {
    const first = this.items.find((item) => item.message);
    return first ? first.order[0] : null;
  }

  get newestId() {
    for (let i = this.items.length - 1; i >= 0; i -= 1) {
      if (this.items[i].message) return this.items[i].order[0];
    }
    return null;
  }

  renderTab(selected) {
    const label = this.kind === 'room' ? `#${this.name}` : `@${this.name}`;
    const badge = this.unread > 0 ? h('span', { class: 'unread' }, String(this.unread)) : null;
    this.tab.replaceChildren(h('span', { class: 'tab-label' }, label), badge ?? '');
    const kind = this.kind === 'room' ? `Room ${this.name}` : `Private conversation with ${this.name}`;
    this.tab.setAttribute('aria-label', this.unread > 0 ? `${kind}, ${this.unread} unread` : kind);
    this.tab.setAttribute('aria-selected', String(selected));
    this.tab.tabIndex = selected ? 0 : -1;
  }

  /**
   * Adds a message (a `message` or `private` event, a Stored object, or our own confirmed one).
   * Returns null if its id is shown already, else whether it went at the very end.
   */
  addMessage(message) {
    if (this.ids.has(message.id)) return null;
    this.ids.add(message.id);
    const own = fold(message.from) === fold(this.me);
    const node = h('li', {
      class: own ? 'message own' : 'message',
      'data-id': String(message.id),
      'data-from': message.from,
    },
    timeElement(message.ts),
    h('span', { class: 'message-from' }, message.from),
    h('span', { class: 'message-text' }, message.text));
    paint(node, message.from);
    return this.insert({ order: [message.id, 0], node, message: true });
  }

  /** Adds a notice made of strings and nodes; `kind` styles it (e.g. 'error'). */
  addNotice(parts, kind = '') {
    this.notices += 1;
    const node = h('li', { class: kind ? `notice ${kind}` : 'notice' },
      timeElement(Date.now()),
      h('span', { class: 'notice-text' }, ...parts));
    return this.insert({ order: [this.newestId ?? 0, this.notices], node, message: false });
  }

  insert(item) {
    // Binary search for the first item ordered after the new one.
    let low = 0;
    let high = this.items.length;
    while (low < high) {
      const mid = (low + high) >> 1;
      if (compare(this.items[mid].order, item.order) <= 0) low = mid + 1;
      else high = mid;
    }
    const next = this.items[low];
    this.items.splice(low, 0, item);
    this.list.insertBefore(item.node, next ? next.node : null);
    return next === undefined;
  }

  /**
   * Forgets everything older than message `id`. Used when catching up after a long absence
   * found more than it will fetch at once: what is shown stays one unbroken stretch, so that
   * "Load earlier messages" (which pages back from the oldest shown) fills the rest.
   */
  dropBelow(id) {
    const keep = [];
    for (const item of this.items) {
      if (item.order[0] < id) {
        item.node.remove();
        if (item.message) this.ids.delete(item.order[0]);
      } else {
        keep.push(item);
      }
    }
    this.items = keep;
    this.exhausted = false;
  }
}
