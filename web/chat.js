// The chat screen: the tabs (one per room joined and per private conversation), the timeline of
// the tab in view, the composer, joining and leaving rooms, paging back through history, and
// catching up after a reconnection.
//
// What the user has open (rooms and private tabs, in tab order) is the state that survives a
// lost connection and a page reload: after each Welcome, `start` makes the server agree with it
// again (joins the rooms, parts the lobby if the user had left it) and fills the gaps with
// `history`, while message ids keep anything from showing twice.

import { Conversation, keyOf } from './conversation.js';
import { LOST } from './connection.js';
import { h, fold, paint, formatSize, fileHref, utf8Length } from './util.js';

/** Messages per `history` request. */
const PAGE = 50;
/** Pages fetched to catch up after a reconnection before leaving the rest to the user. */
const CATCH_UP_PAGES = 20;
/** Within this many pixels of the bottom, the timeline follows new messages. */
const STICKY_PX = 48;

const PART_REASONS = {
  quit: 'signed off',
  lost: 'connection lost',
  timeout: 'timed out',
  too_slow: 'too slow',
  protocol_error: 'protocol error',
  flooding: 'flooding',
};

export class Chat {
  /**
   * els: the elements of index.html this module drives. hooks: onChange(snapshot) when tabs
   * open, close or change, onMembers(names) with the names of a joined room (all online).
   */
  constructor(session, els, hooks) {
    this.session = session;
    this.els = els;
    this.hooks = hooks;
    this.me = '';
    this.lobby = 'lobby';
    this.maxText = 4096;
    this.conversations = new Map();
    this.current = null;
    // Bumped by each Welcome and by sign-out, so that work begun for an older connection
    // (rejoining, catching up) stops instead of acting on the new one.
    this.epoch = 0;
    // The highest message id this page has been given. Ids grow across the whole server and
    // each connection receives its messages in id order, so when the connection drops, every
    // conversation has been given everything up to here: catching up starts from it.
    this.highestSeen = 0;
    this.wire();
  }

  wire() {
    const { composerForm, composerInput, joinForm, joinInput, partButton, loadEarlier, tabs } = this.els;
    composerForm.addEventListener('submit', (e) => {
      e.preventDefault();
      this.send();
    });
    composerInput.addEventListener('keydown', (e) => {
      // Enter sends, Shift+Enter is a new line; not while an input method is composing.
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this.send();
      }
    });
    composerInput.addEventListener('input', () => this.checkLength());
    joinForm.addEventListener('submit', (e) => {
      e.preventDefault();
      this.join(joinInput.value);
    });
    partButton.addEventListener('click', () => this.leaveCurrent());
    loadEarlier.addEventListener('click', () => {
      if (this.current) this.loadEarlier(this.current);
    });
    tabs.addEventListener('keydown', (e) => this.tabKeys(e));
  }

  /**
   * Sets up after a Welcome. `plan` is what to restore ({tabs, current}, from sessionStorage)
   * or null for a fresh start; after a reconnection the open tabs are the plan.
   */
  start(welcome, { reconnected, plan }) {
    if (reconnected) {
      plan = this.snapshot();
    } else {
      this.reset();
    }
    const epoch = ++this.epoch;
    this.me = welcome.name;
    this.lobby = welcome.room;
    this.maxText = welcome.max_text ?? this.maxText;
    if (!plan) plan = { tabs: [`room:${welcome.room}`], current: `room:${welcome.room}` };

    for (const tab of plan.tabs) {
      const [kind, name] = splitTab(tab);
      if (kind) this.ensure(kind, name);
    }
    this.select(this.conversations.get(keyOfTab(plan.current)) ?? this.first());
    // The server put us in the lobby; a user who had left it stays out.
    if (!this.conversations.has(keyOf('room', welcome.room))) {
      this.session.request('part', { room: welcome.room }).catch(() => {});
    }
    for (const conv of this.conversations.values()) {
      if (reconnected) conv.addNotice(['Reconnected.']);
      this.rejoin(conv, epoch);
    }
    this.updateView();
    this.changed();
  }

  /** The connection was lost: remember where each timeline stood, to catch up from there. */
  lost() {
    for (const conv of this.conversations.values()) {
      conv.catchUpFrom ??= Math.max(conv.newestId ?? 0, this.highestSeen);
      conv.addNotice(['Connection lost. Reconnecting…'], 'error');
    }
    this.epoch += 1;
    this.updateView();
  }

  /** Forgets every conversation (sign-out, or a sign-in that starts afresh). */
  reset() {
    this.epoch += 1;
    this.highestSeen = 0;
    for (const conv of this.conversations.values()) conv.tab.remove();
    this.conversations.clear();
    this.current = null;
    this.els.composerInput.value = '';
    this.els.timelineSlot.replaceChildren();
    this.updateView();
  }

  /** What to restore later: the tabs in order and the one in view. */
  snapshot() {
    return {
      tabs: [...this.conversations.values()].map((conv) => `${conv.kind}:${conv.name}`),
      current: this.current ? `${this.current.kind}:${this.current.name}` : null,
    };
  }

  handle(event) {
    switch (event.type) {
      case 'message': {
        const conv = this.room(event.room);
        if (conv) this.add(conv, [event], () => true);
        break;
      }
      case 'private': {
        // A message to oneself comes from oneself: its conversation is the recipient's.
        const peer = fold(event.from) === fold(this.me) ? event.to : event.from;
        this.add(this.ensure('dm', peer, true), [event], () => true);
        break;
      }
      case 'backlog': {
        const conv = this.room(event.room);
        if (conv) {
          this.add(conv, event.messages ?? [], (m) => conv.catchUpFrom !== null && m.id > conv.catchUpFrom);
          this.probe(conv);
        }
        break;
      }
      case 'join': {
        const conv = this.room(event.room);
        if (conv && event.users?.length) this.notice(conv, [namesNode(event.users), ` joined #${event.room}`]);
        break;
      }
      case 'part': {
        const conv = this.room(event.room);
        if (!conv || !event.users?.length) break;
        const why = PART_REASONS[event.reason];
        this.notice(conv, [namesNode(event.users), ` left #${event.room}${why ? ` (${why})` : ''}`]);
        break;
      }
      case 'shared': {
        // A share belongs to no room: it goes to the tab in view, where it will be seen.
        if (this.current) this.notice(this.current, sharedParts(event.user, event.path, event.size), 'shared');
        break;
      }
      default:
        break;
    }
  }

  /** Opens (or shows) the private conversation with `name` and puts the cursor in the composer. */
  openPrivate(name) {
    this.select(this.ensure('dm', name, true));
    this.els.composerInput.focus();
  }

  /** Shows a notice in the tab in view, e.g. "you shared notes.pdf". */
  noticeInView(parts, kind) {
    if (this.current) this.notice(this.current, parts, kind);
  }

  room(name) {
    return this.conversations.get(keyOf('room', name)) ?? null;
  }

  first() {
    return this.conversations.values().next().value ?? null;
  }

  /** The conversation of that kind and name, made (with its tab) if needed. */
  ensure(kind, name, fetchHistory = false) {
    const key = keyOf(kind, name);
    let conv = this.conversations.get(key);
    if (conv) return conv;
    conv = new Conversation(kind, name, this.me);
    this.conversations.set(key, conv);
    conv.tab.addEventListener('click', () => this.select(conv));
    this.els.tabs.append(conv.tab);
    // A room's recent messages come with its backlog; a private conversation asks for them.
    if (fetchHistory && this.session.online) this.loadEarlier(conv);
    this.changed();
    return conv;
  }

  select(conv) {
    const previous = this.current;
    if (previous === conv) return;
    if (previous) {
      previous.draft = this.els.composerInput.value;
      previous.scroll = this.scrollState();
      previous.renderTab(false);
    }
    this.current = conv;
    this.els.timelineSlot.replaceChildren();
    if (conv) {
      conv.unread = 0;
      conv.renderTab(true);
      this.els.timelineSlot.append(conv.list);
      this.els.composerInput.value = conv.draft;
      this.restoreScroll(conv.scroll);
    }
    this.updateView();
    this.changed();
  }

  remove(conv) {
    const order = [...this.conversations.values()];
    const index = order.indexOf(conv);
    this.conversations.delete(conv.key);
    conv.tab.remove();
    if (this.current === conv) {
      this.current = null;
      const next = order[index + 1] ?? order[index - 1] ?? null;
      this.select(next);
      if (next) next.tab.focus();
    }
    this.updateView();
    this.changed();
  }

  /**
   * Adds messages to a conversation. `isNew(message)` says which count as unread (live ones,
   * and those a catch-up found) when the conversation is not in view. Keeps the reader's place:
   * the timeline follows new messages only when it was at the bottom, and messages inserted
   * above do not move what is on screen.
   */
  add(conv, messages, isNew) {
    const inView = conv === this.current;
    const view = this.els.timeline;
    const atBottom = inView && this.atBottom();
    const fromBottom = view.scrollHeight - view.scrollTop;
    let above = false;
    let unread = 0;
    for (const message of messages) {
      this.highestSeen = Math.max(this.highestSeen, message.id);
      const atEnd = conv.addMessage(message);
      if (atEnd === null) continue;
      if (!atEnd) above = true;
      if (isNew(message) && fold(message.from) !== fold(this.me)) unread += 1;
    }
    if (!inView) {
      if (unread) {
        conv.unread += unread;
        conv.renderTab(false);
        this.updateTitle();
      }
      return;
    }
    if (atBottom) view.scrollTop = view.scrollHeight;
    else if (above) view.scrollTop = view.scrollHeight - fromBottom;
  }

  notice(conv, parts, kind) {
    const follow = conv === this.current && this.atBottom();
    conv.addNotice(parts, kind);
    if (follow) this.els.timeline.scrollTop = this.els.timeline.scrollHeight;
  }

  async send() {
    const conv = this.current;
    const input = this.els.composerInput;
    if (!conv || conv.sending) return;
    const text = input.value;
    if (!text.trim()) return;
    if (utf8Length(text) > this.maxText) {
      this.note(`Too long: at most ${this.maxText} bytes per message.`, true);
      return;
    }
    if (!this.session.online) {
      this.notice(conv, ['Not connected: your message was not sent. It waits in the box below until the connection is back.'], 'error');
      return;
    }
    conv.sending = true;
    this.updateView();
    try {
      const sent = conv.kind === 'room'
        ? await this.session.request('say', { room: conv.name, text })
        : await this.session.request('msg', { to: conv.name, text });
      // Our own messages come back only as this reply: the reply is the message.
      this.add(conv, [{ id: sent.id, ts: sent.ts, from: this.me, text }], () => false);
      if (sent.queued) this.notice(conv, [`${sent.to} is offline and will get your message at their next sign-in.`]);
      this.clearSent(conv, text);
    } catch (err) {
      if (err.code === 'storage_failed') {
        // Delivered but not stored (section 5.3): sending it again would say it twice.
        this.notice(conv, [err.message], 'error');
        this.clearSent(conv, text);
      } else if (err.code === LOST) {
        this.notice(conv, ['Your message was not confirmed before the connection was lost. It is still in the box below: check the timeline once reconnected before sending it again.'], 'error');
      } else {
        this.notice(conv, [err.message], 'error');
      }
    } finally {
      conv.sending = false;
      this.updateView();
      this.checkLength();
    }
  }

  /** Empties the composer (or the tab's draft) unless the user has typed something else since. */
  clearSent(conv, text) {
    if (conv === this.current) {
      if (this.els.composerInput.value === text) this.els.composerInput.value = '';
    } else if (conv.draft === text) {
      conv.draft = '';
    }
  }

  async join(name) {
    const room = name.trim();
    this.els.joinError.textContent = '';
    if (!room) return;
    try {
      const result = await this.session.request('join', { room });
      // The backlog follows the reply; the conversation exists before it arrives, because this
      // continuation runs before the socket delivers its next message.
      const conv = this.ensure('room', result.room);
      this.hooks.onMembers(result.members ?? []);
      this.select(conv);
      this.probe(conv);
      this.els.joinInput.value = '';
      this.els.composerInput.focus();
    } catch (err) {
      this.els.joinError.textContent = err.message;
    }
  }

  async leaveCurrent() {
    const conv = this.current;
    if (!conv) return;
    // A private tab is only ours to close; offline, a room is simply not rejoined.
    if (conv.kind === 'dm' || !this.session.online) {
      this.remove(conv);
      return;
    }
    try {
      await this.session.request('part', { room: conv.name });
      this.remove(conv);
    } catch (err) {
      if (err.code === 'not_in_room') this.remove(conv);
      else this.notice(conv, [`Could not leave ${conv.title}: ${err.message}`], 'error');
    }
  }

  /** One page of history older than the oldest message shown (the newest page if none). */
  async loadEarlier(conv) {
    if (conv.loading) return;
    conv.loading = true;
    this.updateView();
    const epoch = this.epoch;
    try {
      const { messages } = await this.session.request('history', { ...conv.target, before: conv.oldestId, limit: PAGE });
      if (epoch !== this.epoch) return;
      // A short page is the last one: nothing older is left to offer.
      if (messages.length < PAGE) conv.exhausted = true;
      this.add(conv, messages, () => false);
    } catch (err) {
      if (err.code !== LOST && epoch === this.epoch) this.notice(conv, [`Could not load earlier messages: ${err.message}`], 'error');
    } finally {
      conv.loading = false;
      this.updateView();
    }
  }

  /**
   * Asks whether anything is older than the oldest message shown, so that "Load earlier
   * messages" is offered only when there is. Sent after a join, a rejoin and a backlog: a
   * room's backlog arrives before the reply to any later request (protocol section 4.3), and
   * a room with no messages sends none.
   */
  async probe(conv) {
    if (conv.exhausted) return;
    const epoch = this.epoch;
    const before = conv.oldestId;
    try {
      const { messages } = await this.session.request('history', { ...conv.target, before, limit: 1 });
      if (epoch !== this.epoch || before !== conv.oldestId) return;
      if (messages.length === 0) {
        conv.exhausted = true;
        this.updateView();
      }
    } catch {
      // The button stays; clicking it asks again.
    }
  }

  /** After a Welcome: be a member of the room again, then fill the gap in its timeline. */
  async rejoin(conv, epoch) {
    try {
      if (conv.kind === 'room' && conv.name !== this.lobby) {
        const result = await this.session.request('join', { room: conv.name });
        this.hooks.onMembers(result.members ?? []);
      }
      if (epoch === this.epoch) await this.catchUp(conv, epoch);
      if (epoch === this.epoch) this.probe(conv);
    } catch (err) {
      if (err.code === LOST || epoch !== this.epoch) return;
      this.remove(conv);
      this.noticeInView([`Could not rejoin ${conv.title}: ${err.message}`], 'error');
    }
  }

  /**
   * Fetches history from the newest message back to the last one shown before the connection
   * was lost. The backlog that came with the join may already hold all of it; this covers a
   * longer absence, and private conversations, which have no backlog.
   */
  async catchUp(conv, epoch) {
    const known = conv.catchUpFrom;
    if (known === null) {
      // Not cut off since it was opened: a room's backlog is all there is to show; a private
      // tab asks.
      if (conv.kind === 'dm' && conv.newestId === null) await this.loadEarlier(conv);
      return;
    }
    let before = null;
    for (let page = 0; page < CATCH_UP_PAGES; page += 1) {
      const { messages } = await this.session.request('history', { ...conv.target, before, limit: PAGE });
      if (epoch !== this.epoch) return;
      this.add(conv, messages, (m) => m.id > known);
      if (messages.length === 0 || messages[0].id <= known) {
        conv.catchUpFrom = null;
        return;
      }
      before = messages[0].id;
    }
    conv.dropBelow(before);
    conv.catchUpFrom = null;
    this.notice(conv, ['You missed many messages; “Load earlier messages” shows the rest.']);
    this.updateView();
  }

  /** Arrow keys, Home and End move between tabs: only the selected tab is in the Tab order. */
  tabKeys(e) {
    const tabs = [...this.conversations.values()];
    const index = tabs.indexOf(this.current);
    if (index < 0) return;
    const moves = { ArrowLeft: index - 1, ArrowRight: index + 1, Home: 0, End: tabs.length - 1 };
    if (!(e.key in moves)) return;
    e.preventDefault();
    const next = tabs[(moves[e.key] + tabs.length) % tabs.length];
    this.select(next);
    next.tab.focus();
  }

  /** Shows or hides what depends on the tab in view and on the connection. */
  updateView() {
    const { composerInput, composerSend, partButton, loadEarlier, timelineStart, timelineEmpty, title } = this.els;
    const conv = this.current;
    title.textContent = conv ? conv.title : 'No conversation open';
    if (conv?.kind === 'dm') paint(title, conv.name);
    title.classList.toggle('painted', conv?.kind === 'dm');
    partButton.hidden = !conv;
    partButton.textContent = conv?.kind === 'dm' ? 'Close' : 'Leave';
    partButton.setAttribute('aria-label', conv ? (conv.kind === 'dm' ? `Close the conversation with ${conv.name}` : `Leave ${conv.title}`) : 'Leave');
    composerInput.disabled = !conv;
    composerInput.placeholder = conv ? `Message ${conv.title}` : 'Join a room to start';
    composerSend.disabled = !conv || conv.sending;
    composerInput.classList.toggle('pending', Boolean(conv?.sending));
    loadEarlier.hidden = !conv || conv.exhausted;
    loadEarlier.disabled = !conv || conv.loading || !this.session.online;
    loadEarlier.textContent = conv?.loading ? 'Loading…' : 'Load earlier messages';
    timelineStart.hidden = !conv || !conv.exhausted;
    timelineEmpty.hidden = Boolean(conv);
    this.updateTitle();
  }

  /** Warns when the text nears the server's `max_text`, counted in UTF-8 bytes as it counts. */
  checkLength() {
    const used = utf8Length(this.els.composerInput.value);
    if (used > this.maxText) this.note(`${used - this.maxText} bytes over the limit of ${this.maxText}.`, true);
    else if (used > this.maxText * 0.9) this.note(`${this.maxText - used} bytes left.`, false);
    else this.note('', false);
  }

  note(text, isError) {
    this.els.composerNote.textContent = text;
    this.els.composerNote.classList.toggle('error', isError);
  }

  updateTitle() {
    let unread = 0;
    for (const conv of this.conversations.values()) unread += conv.unread;
    document.title = unread > 0 ? `(${unread}) Parley` : 'Parley';
  }

  atBottom() {
    const view = this.els.timeline;
    return view.scrollHeight - view.scrollTop - view.clientHeight < STICKY_PX;
  }

  scrollState() {
    const view = this.els.timeline;
    return this.atBottom() ? null : view.scrollHeight - view.scrollTop;
  }

  restoreScroll(fromBottom) {
    const view = this.els.timeline;
    view.scrollTop = fromBottom === null ? view.scrollHeight : view.scrollHeight - fromBottom;
  }

  changed() {
    this.hooks.onChange(this.snapshot());
  }
}

/** "room:lobby" → ['room', 'lobby']; anything else → [null]. */
function splitTab(tab) {
  const match = /^(room|dm):(.+)$/.exec(tab ?? '');
  return match ? [match[1], match[2]] : [null, null];
}

function keyOfTab(tab) {
  const [kind, name] = splitTab(tab);
  return kind ? keyOf(kind, name) : null;
}

/** The names of a join or part notice, each in its colour. */
function namesNode(names) {
  const shown = names.slice(0, 10);
  const span = h('span', { class: 'names' });
  shown.forEach((name, i) => {
    if (i > 0) span.append(i === shown.length - 1 && names.length <= 10 ? ' and ' : ', ');
    span.append(paint(h('span', { class: 'name' }, name), name));
  });
  if (names.length > 10) span.append(` and ${names.length - 10} others`);
  return span;
}

/** "bob shared notes.pdf (12 KB) in Docs", the file name a download link. */
export function sharedParts(user, path, size) {
  const slash = path.lastIndexOf('/');
  const name = path.slice(slash + 1);
  const folder = slash > 0 ? path.slice(0, slash) : '';
  return [
    paint(h('span', { class: 'name' }, user), user),
    ' shared ',
    h('a', { href: fileHref(path), download: name }, name),
    ` (${formatSize(size)})`,
    folder ? ` in ${folder}` : '',
  ];
}
