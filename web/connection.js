// One WebSocket to the server, speaking the native control messages of protocol section 3:
// each text message is one JSON object. Requests get increasing ids and a promise that the
// matching `ok` or `error` reply settles; everything else the server sends is an event, handed
// to `onEvent`. Binary messages (data frames) are ignored: the web client moves files over HTTP.
//
// A Connection lives once. When it closes, every request still waiting fails, and `onClose`
// says whether the server explained itself with a `bye` first; reconnecting is session.js's job.

/** A failed request, or a connection that ended: `code` is a protocol error code (section 10). */
export class RequestError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/** Codes of our own, for failures the server did not name. */
export const LOST = 'connection_lost';
export const UNREACHABLE = 'unreachable';

/** Time to open the socket. The server itself allows 10 s to sign in (section 4.5). */
const OPEN_TIMEOUT_MS = 10_000;

/**
 * How long a reply may take before the connection is taken for dead. The browser answers the
 * server's pings but never sends its own, so a half-open connection (a phone changing networks)
 * shows up only as a reply that never comes. The slowest honest replies are a `hello` behind
 * wrong passwords (up to 8 s, section 4.8) and requests queued behind messages being stored.
 */
const REPLY_TIMEOUT_MS = 30_000;

export class Connection {
  constructor({ onEvent, onClose }) {
    this.onEvent = onEvent;
    this.onClose = onClose;
    this.nextId = 1;
    this.pending = new Map();
    this.bye = null;
    this.closedByUs = false;
    this.ended = false;
    this.opening = null;
    this.socket = null;
  }

  /** Opens the socket; rejects with UNREACHABLE if that fails or takes too long. */
  open() {
    const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.close(false), OPEN_TIMEOUT_MS);
      this.opening = { resolve, reject, timer };
      try {
        this.socket = new WebSocket(scheme + location.host + '/ws');
      } catch {
        this.closed();
        return;
      }
      this.socket.binaryType = 'arraybuffer';
      this.socket.onopen = () => {
        clearTimeout(timer);
        this.opening = null;
        resolve();
      };
      this.socket.onmessage = (e) => this.receive(e.data);
      this.socket.onclose = () => this.closed();
    });
  }

  /** Sends a request; resolves with its `result`, rejects with a RequestError. */
  request(type, fields = {}) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) {
      return Promise.reject(this.lostError());
    }
    const id = this.nextId++;
    this.socket.send(JSON.stringify({ id, type, ...fields }));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.close(false), REPLY_TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer });
    });
  }

  /**
   * Closes the socket. `deliberate` tells `onClose` that nobody needs to reconnect (sign-out,
   * a superseded attempt); a timeout closes without it, as a lost connection. The connection
   * counts as closed at once: on a dead network the socket's own close event can take long.
   */
  close(deliberate = true) {
    if (deliberate) this.closedByUs = true;
    if (this.socket && this.socket.readyState <= WebSocket.OPEN) this.socket.close();
    this.closed();
  }

  receive(data) {
    if (this.ended || typeof data !== 'string') return;
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    if (!message || typeof message !== 'object') return;
    if (message.type === 'ok' || message.type === 'error') {
      const waiting = this.pending.get(message.id);
      if (!waiting) return;
      this.pending.delete(message.id);
      clearTimeout(waiting.timer);
      if (message.type === 'ok') waiting.resolve(message.result ?? {});
      else waiting.reject(new RequestError(message.code, message.message || 'The server refused the request.'));
      return;
    }
    if (message.type === 'bye') {
      // Nothing follows a bye (section 7.5): what is still waiting fails with its reason now,
      // so that a `hello` refused by `server_full` reports that rather than a lost connection.
      this.bye = message;
      this.failPending();
    }
    this.onEvent(message);
  }

  /** Runs once, whichever comes first: the socket's close event or our close(). */
  closed() {
    if (this.ended) return;
    this.ended = true;
    if (this.opening) {
      clearTimeout(this.opening.timer);
      this.opening.reject(new RequestError(UNREACHABLE, 'Cannot reach the server.'));
      this.opening = null;
    }
    this.failPending();
    this.onClose({ bye: this.bye, deliberate: this.closedByUs });
  }

  failPending() {
    for (const { reject, timer } of this.pending.values()) {
      clearTimeout(timer);
      reject(this.lostError());
    }
    this.pending.clear();
  }

  lostError() {
    if (this.bye) return new RequestError(this.bye.code, this.bye.message || 'The server closed the connection.');
    return new RequestError(LOST, 'The connection to the server was lost.');
  }
}
