// The list of users online. No event announces sign-ins and sign-offs as such: the Welcome's
// `online` list starts it, `join` events in any room name people who are online, and `part`
// events for any reason but `part` (quit, lost, timeout...) name people who went offline. What
// those miss (someone who signs off while sharing no room with us, rooms larger than the roster
// limit, which report only `members` counts) a `users` request repairs, after a `members` event
// and every minute. That request also serves as the connection's liveness check (connection.js).

import { h, fold, paint, compareNames } from './util.js';

const REFRESH_MS = 60_000;
/** Delay before refreshing after a `members` event: large rooms send them in bursts. */
const MEMBERS_SETTLE_MS = 2_000;

export class People {
  /** els: {list, count}; onPick(name) when a name is chosen. */
  constructor(session, els, onPick) {
    this.session = session;
    this.els = els;
    this.onPick = onPick;
    // Folded name → name as spelled by its user.
    this.names = new Map();
    // How many are online in all; more than `names` holds once the server has more than its
    // roster limit online, since no list it sends names more.
    this.total = 0;
    this.me = '';
    this.timer = null;
    this.settle = null;
    els.list.addEventListener('click', (e) => {
      const button = e.target.closest('button.user');
      if (button) this.onPick(button.dataset.name);
    });
  }

  start(welcome) {
    this.me = welcome.name;
    this.replace(welcome.online ?? [], welcome.online_count ?? 0);
    clearInterval(this.timer);
    this.timer = setInterval(() => this.refresh(), REFRESH_MS);
  }

  stop() {
    clearInterval(this.timer);
    clearTimeout(this.settle);
    this.timer = null;
  }

  clear() {
    this.stop();
    this.names.clear();
    this.total = 0;
    this.render();
  }

  handle(event) {
    if (event.type === 'join') {
      this.add(event.users ?? []);
    } else if (event.type === 'part' && event.reason !== 'part') {
      for (const name of event.users ?? []) {
        if (this.names.delete(fold(name))) this.total -= 1;
      }
      this.render();
    } else if (event.type === 'members') {
      clearTimeout(this.settle);
      this.settle = setTimeout(() => this.refresh(), MEMBERS_SETTLE_MS);
    }
  }

  /** Names known to be online (a joined room's members, say). */
  add(names) {
    for (const name of names) {
      const key = fold(name);
      if (!this.names.has(key)) this.total += 1;
      this.names.set(key, name);
    }
    this.render();
  }

  async refresh() {
    try {
      const result = await this.session.request('users');
      this.replace(result.users ?? [], result.count ?? 0);
    } catch {
      // Offline or refused: the reconnection refreshes the list with its Welcome.
    }
  }

  replace(names, total) {
    this.names = new Map(names.map((name) => [fold(name), name]));
    this.total = Math.max(total, this.names.size);
    this.render();
  }

  render() {
    const { list, count } = this.els;
    // Re-rendering would drop the keyboard focus from a name: find it again afterwards.
    const focused = document.activeElement?.closest?.('button.user')?.dataset.name;
    const sorted = [...this.names.values()].sort(compareNames);
    list.replaceChildren(...sorted.map((name) => this.item(name)));
    const hidden = this.total - sorted.length;
    count.textContent = hidden > 0 ? `${this.total} online, ${hidden} not listed` : `${this.total} online`;
    if (focused) {
      for (const button of list.querySelectorAll('button.user')) {
        if (button.dataset.name === focused) button.focus();
      }
    }
  }

  item(name) {
    const self = fold(name) === fold(this.me);
    const button = h('button', {
      class: self ? 'user self' : 'user',
      type: 'button',
      'data-name': name,
      title: self ? 'Notes to yourself' : `Private conversation with ${name}`,
    },
    h('span', { class: 'user-name' }, name),
    self ? h('span', { class: 'user-you' }, ' (you)') : null);
    return h('li', {}, paint(button, name));
  }
}
