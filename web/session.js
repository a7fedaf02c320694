// Signing in, staying signed in and signing out: owns the current Connection, sends `hello`,
// holds the session token that authorizes file downloads and uploads, and reconnects
// with backoff when the connection is lost.
//
// A sign-in is a loop of attempts whose policy depends on who started it:
// - 'manual': the sign-in form. One attempt; any refusal goes back to the form.
// - 'resume': the page was reloaded with a name kept in sessionStorage. The old page's connection
//   may still hold the name on the server for a moment, so `name_taken` is retried for a while;
//   an unreachable server is retried forever.
// - 'reconnect': a signed-in connection was lost. Everything passing is retried forever; only
//   refusals that another try cannot fix (a wrong password, an invalid name...) stop it.
// Starting a new loop (or signing out) abandons the running one: each loop carries a generation
// number and gives up as soon as it is no longer the latest.

import { Connection, RequestError, LOST, UNREACHABLE } from './connection.js';

const CLIENT = 'parley-web/0.1';
const FIRST_DELAY_MS = 300;
const MAX_DELAY_MS = 3_000;

/** How long a 'resume' retries `name_taken`: the old page's socket is normally gone by then. */
const NAME_TAKEN_WINDOW_MS = 8_000;

/**
 * Failures that waiting can fix: the network, a restarting or full server, a database that
 * failed once. Any other `bye` (`bad_frame`, `frame_too_large`, codes this client does not
 * know, which may mean "you were removed") stops reconnecting and shows the server's message.
 */
const PASSING = new Set([
  LOST, UNREACHABLE, 'shutdown', 'timeout', 'too_slow', 'server_full', 'handshake_timeout', 'storage_failed',
]);

const STATUS_TEXT = {
  online: 'Online',
  connecting: 'Connecting…',
  reconnecting: 'Reconnecting…',
  offline: 'Offline',
};

export class Session {
  /**
   * hooks: onStatus(state, text, detail), onWelcome(welcome, {reconnected}), onEvent(event),
   * onLost(), onEnded({message, code, name}).
   */
  constructor(hooks) {
    this.hooks = hooks;
    this.conn = null;
    this.name = null;
    // Kept in memory only, to sign in again after a lost connection; never stored.
    this.password = null;
    this.welcome = null;
    this.token = null;
    this.generation = 0;
    this.wake = null;
  }

  get online() {
    return this.conn !== null;
  }

  /** Signs in; `automatic` for a page reload (see 'resume' above). */
  signIn(name, password, automatic = false) {
    this.name = name;
    this.password = password || null;
    return this.run(automatic ? 'resume' : 'manual');
  }

  /** Sends a request on the signed-in connection. */
  request(type, fields = {}) {
    if (!this.conn) return Promise.reject(new RequestError(LOST, 'Not connected to the server.'));
    return this.conn.request(type, fields);
  }

  /** Says `quit`, waits briefly for the reply, and forgets the credentials. */
  async signOut() {
    this.generation += 1;
    const conn = this.conn;
    this.conn = null;
    this.password = null;
    this.token = null;
    this.status('offline');
    if (conn) {
      const quit = conn.request('quit').catch(() => {});
      await Promise.race([quit, new Promise((resolve) => setTimeout(resolve, 1_500))]);
      conn.close();
    }
  }

  /**
   * Has the server set the download cookie to this session's token. The server sets it
   * (HttpOnly: no script can read it) when the page shows the token in a header, which pages
   * of other sites or ports cannot do. Called at sign-in and again just before each download:
   * the cookie belongs to the whole browser, so another Parley tab, signed in under another
   * name or since signed out, may have set its own meanwhile.
   */
  async authorize() {
    if (!this.conn || !this.token) return;
    try {
      await fetch('/session', { method: 'POST', headers: { 'X-Parley-Token': this.token } });
    } catch {
      // The download that follows says what went wrong.
    }
  }

  /** Cuts the current wait short: the browser says the network is back. */
  retryNow() {
    if (this.wake) this.wake();
  }

  /** The loop of attempts; `why` is shown beside the status until the first attempt fails. */
  async run(mode, why = '') {
    const generation = ++this.generation;
    const started = Date.now();
    let delay = FIRST_DELAY_MS;
    const waiting = mode === 'reconnect' ? 'reconnecting' : 'connecting';
    this.status(waiting, why);
    for (;;) {
      try {
        await this.attempt(generation, mode);
        return;
      } catch (err) {
        if (generation !== this.generation) return;
        if (!this.worthRetrying(err, mode, started)) {
          this.end(err);
          return;
        }
        this.status(waiting, err.message);
        await this.pause(delay);
        if (generation !== this.generation) return;
        delay = Math.min(delay * 2, MAX_DELAY_MS);
      }
    }
  }

  async attempt(generation, mode) {
    const conn = new Connection({
      onEvent: (event) => {
        // Only the signed-in connection's events count. The Welcome is settled (and `this.conn`
        // set, in attempt's continuation) before the socket delivers the next message, since
        // promise continuations run before the next task.
        if (conn === this.conn) this.hooks.onEvent(event);
      },
      onClose: (info) => this.closed(conn, info),
    });
    try {
      await conn.open();
      const hello = { versions: [1], name: this.name, client: CLIENT };
      if (this.password) hello.password = this.password;
      const welcome = await conn.request('hello', hello);
      if (generation !== this.generation) {
        conn.close();
        return;
      }
      this.conn = conn;
      this.welcome = welcome;
      this.token = typeof welcome.token === 'string' ? welcome.token : null;
      this.authorize();
      this.status('online');
      this.hooks.onWelcome(welcome, { reconnected: mode === 'reconnect' });
    } catch (err) {
      conn.close();
      throw err;
    }
  }

  worthRetrying(err, mode, started) {
    if (mode === 'manual') return false;
    if (err.code === 'name_taken') {
      // After a lost connection the server may hold the old session until it times it out.
      const timeout = this.welcome?.timeout_ms ?? 10_000;
      const window = mode === 'reconnect' ? Math.max(NAME_TAKEN_WINDOW_MS, timeout + 2_000) : NAME_TAKEN_WINDOW_MS;
      return Date.now() - started < window;
    }
    return PASSING.has(err.code);
  }

  closed(conn, { bye, deliberate }) {
    if (conn !== this.conn) return;
    this.conn = null;
    if (deliberate) return;
    if (bye && !PASSING.has(bye.code)) {
      this.end(new RequestError(bye.code, bye.message || 'The server closed the connection.'));
      return;
    }
    this.hooks.onLost();
    this.run('reconnect', bye?.message);
  }

  /** Gives up: back to the sign-in form with the server's sentence. */
  end(err) {
    this.generation += 1;
    this.conn = null;
    // A refused password must be typed again rather than sent again on its own (section 4.8).
    this.password = null;
    this.token = null;
    this.status('offline');
    this.hooks.onEnded({ message: err.message, code: err.code, name: this.name });
  }

  pause(ms) {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        if (this.wake === done) this.wake = null;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wake = done;
    });
  }

  status(state, detail = '') {
    this.hooks.onStatus(state, STATUS_TEXT[state], detail);
  }
}
