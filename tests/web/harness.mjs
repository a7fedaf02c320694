// The harness of the browser tests: a real `parley server`, real `parley client` processes in
// line mode, and a real headless Chromium driven by playwright-core.
//
// Everything a test starts (servers, terminal clients, browsers, temporary folders) is recorded
// here and released by `finish`, which every test file runs after each test; a failed test
// first leaves screenshots of its pages and the logs of its processes in
// target/web-artifacts/failures/. Every wait is bounded (WAIT unless said otherwise) and waits
// for a condition, never for time to pass.

import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

/** How long any one wait lasts before the test fails. */
export const WAIT = 15_000;
/** A server restart includes the browser's reconnection back-off, hence longer. */
export const RECONNECT_WAIT = 30_000;
/** The bound on a whole test, so a hang fails one test instead of the run. */
export const TEST_TIMEOUT = 180_000;

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const ARTIFACTS = path.join(REPO, 'target', 'web-artifacts');

/** The binary under test; a relative PARLEY_BIN is taken from the repository root. */
export const PARLEY_BIN = path.resolve(REPO, process.env.PARLEY_BIN || 'target/debug/parley');

// Without these Chromium tries to reach Google's services, which on a closed network means
// stalls; the sandbox needs user namespaces that containers and root rarely allow.
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

const DESKTOP = { width: 1280, height: 800 };
export const PHONE = { width: 390, height: 844 };

// What `finish` releases: one test's resources at a time (the runner runs tests one by one).
// `processes` holds LineProcess objects, kept after they exit so a failure report has their output.
const live = { processes: new Set(), browsers: new Set(), pages: new Set(), dirs: new Set() };
// Per page: uncaught errors, console errors and dialogs, for assertions and failure reports.
const pageLogs = new WeakMap();

// A test killed by its timeout, or a crash, must not leave servers running or folders behind.
process.on('exit', () => {
  for (const proc of live.processes) if (proc.running()) proc.proc.kill('SIGKILL');
  for (const dir of live.dirs) fs.rmSync(dir, { recursive: true, force: true });
});

/** A fresh folder under the system's temporary folder, removed by `finish`. */
export function tempDir(label) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `parley-web-${label}-`));
  live.dirs.add(dir);
  return dir;
}

/** Resolves with `promise`, or rejects after `ms` with a message saying what was awaited. */
export async function bounded(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Polls a condition on something outside the browser (files on disk) until it holds. Only for
 * state with no event to wait for; the 50 ms step is the polling interval, not a guess at how
 * long anything takes.
 */
export async function waitUntil(condition, what, ms = WAIT) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await condition();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * A child process whose stdout is read line by line. `waitForLine` reads on from where the
 * previous match stopped, as a person reading the screen would: a line matched once is not
 * matched again, and lines before it are not looked at again.
 */
class LineProcess {
  constructor(label, args, { cwd, env }) {
    this.label = label;
    this.lines = [];
    this.stderr = '';
    this.cursor = 0;
    this.waiters = new Set();
    if (!fs.existsSync(PARLEY_BIN)) {
      throw new Error(`${PARLEY_BIN} does not exist: build it (cargo build -p parley) or set PARLEY_BIN`);
    }
    this.proc = spawn(PARLEY_BIN, args, { cwd, env, stdio: ['pipe', 'pipe', 'pipe'] });
    live.processes.add(this);
    // 'close', not 'exit': by then every line it printed has been read.
    this.exit = new Promise((resolve) => {
      this.proc.once('close', (code, signal) => {
        this.exitCode = code ?? signal;
        resolve(this.exitCode);
        this.wake();
      });
    });
    this.proc.once('error', (error) => {
      this.spawnError = error;
      this.wake();
    });
    let partial = '';
    this.proc.stdout.setEncoding('utf8');
    this.proc.stdout.on('data', (chunk) => {
      const parts = (partial + chunk).split('\n');
      partial = parts.pop();
      this.lines.push(...parts);
      this.wake();
    });
    this.proc.stdout.on('end', () => {
      if (partial) this.lines.push(partial);
    });
    this.proc.stderr.setEncoding('utf8');
    this.proc.stderr.on('data', (chunk) => {
      // The tail is enough to say why something failed; a chatty process must not grow it.
      this.stderr = (this.stderr + chunk).slice(-20_000);
    });
    // A closed stdin (the process exited) must not crash the test run.
    this.proc.stdin.on('error', () => {});
  }

  wake() {
    for (const waiter of this.waiters) waiter();
  }

  running() {
    return this.exitCode === undefined && !this.spawnError;
  }

  /** The last lines and stderr, for failure messages. */
  describe() {
    const last = this.lines.slice(-25).map((l) => `    ${l}`).join('\n');
    const stderr = this.stderr.trim() ? `\n  stderr:\n${this.stderr.trim().slice(-2_000)}` : '';
    return `${this.label}'s last lines:\n${last || '    (none)'}${stderr}`;
  }

  /**
   * Waits for the next line that matches: a RegExp, a predicate, or a string equal to the
   * whole line. Returns the line (or the RegExp's match). Fails at the deadline or when the
   * process ends first, showing its last lines. `fromStart` looks at every line from the
   * first one instead, and leaves the reading position where it was.
   */
  waitForLine(match, timeout = WAIT, { fromStart = false } = {}) {
    const test =
      match instanceof RegExp
        ? (line) => line.match(match)
        : typeof match === 'function'
          ? (line) => (match(line) ? line : null)
          : (line) => (line === match ? line : null);
    const what = match instanceof RegExp || typeof match === 'string' ? String(match) : 'a line';
    return new Promise((resolve, reject) => {
      let cursor = fromStart ? 0 : this.cursor;
      const check = () => {
        while (cursor < this.lines.length) {
          const found = test(this.lines[cursor++]);
          if (!fromStart) this.cursor = cursor;
          if (found) return done(null, found);
        }
        if (this.spawnError) return done(new Error(`${this.label} did not start: ${this.spawnError.message}`));
        if (!this.running()) {
          return done(new Error(`${this.label} exited (${this.exitCode}) before ${what}\n${this.describe()}`));
        }
      };
      const timer = setTimeout(
        () => done(new Error(`${this.label}: no ${what} within ${timeout} ms\n${this.describe()}`)),
        timeout,
      );
      const done = (error, found) => {
        clearTimeout(timer);
        this.waiters.delete(check);
        if (error) reject(error);
        else resolve(found);
      };
      this.waiters.add(check);
      check();
    });
  }

  /** Sends one line to stdin. */
  send(line) {
    this.proc.stdin.write(`${line}\n`);
  }

  /** SIGTERM, then SIGKILL if the process is still there after `grace` ms; resolves with the exit. */
  async terminate(grace = 10_000) {
    if (!this.running()) return this.exitCode;
    this.proc.kill('SIGTERM');
    try {
      return await bounded(this.exit, grace, `${this.label} stopping after SIGTERM`);
    } catch {
      this.proc.kill('SIGKILL');
      await bounded(this.exit, WAIT, `${this.label} stopping after SIGKILL`);
      throw new Error(`${this.label} ignored SIGTERM for ${grace} ms and was killed\n${this.describe()}`);
    }
  }
}

/** The environment for a child: ours, without settings that would change what it is told. */
function childEnv(extra = {}) {
  const env = { ...process.env, ...extra };
  for (const name of ['PARLEY_NO_TLS', 'PARLEY_PASSWORD', 'SERVER_SHARED_FILES']) {
    if (!(name in extra)) delete env[name];
  }
  return env;
}

/**
 * Starts `parley server` on 127.0.0.1. `port` 0 lets the system pick one; a fixed port (a
 * restart) is retried while the previous server's port is still being released. `dataDir`
 * and `sharedDir` default to fresh temporary folders; `args` are extra server options.
 */
export async function startServer({ tls = false, port = 0, dataDir, sharedDir, args = [] } = {}) {
  const root = tempDir('server');
  dataDir ??= path.join(root, 'data');
  sharedDir ??= path.join(root, 'shared');
  fs.mkdirSync(dataDir, { recursive: true });
  fs.mkdirSync(sharedDir, { recursive: true });
  const argv = [
    'server',
    '--host', '127.0.0.1',
    '--port', String(port),
    '--data-dir', dataDir,
    '--shared-dir', sharedDir,
    ...(tls ? [] : ['--no-tls']),
    ...args,
  ];
  const deadline = Date.now() + 20_000;
  for (;;) {
    const proc = new LineProcess(`server :${port}`, argv, { cwd: root, env: childEnv() });
    let match;
    try {
      match = await proc.waitForLine(/^Parley server listening on ([\d.]+):(\d+) /, deadline - Date.now());
    } catch (error) {
      const taken = /cannot listen/.test(proc.stderr);
      if (port !== 0 && taken && Date.now() < deadline) {
        // The previous server's socket is still being released: back off briefly, bind again.
        live.processes.delete(proc);
        await new Promise((resolve) => setTimeout(resolve, 200));
        continue;
      }
      await proc.terminate().catch(() => {});
      throw error;
    }
    const [, host, boundPort] = match;
    proc.label = `server :${boundPort}`;
    // Logged once the shared folder and the database are open (as the Rust tests also wait
    // for): a `parley admin` command run before then can race the server's schema creation.
    await proc.waitForLine(/sharing the folder /, deadline - Date.now(), { fromStart: true });
    const scheme = tls ? 'https' : 'http';
    const server = {
      tls,
      host,
      port: Number(boundPort),
      url: `${scheme}://${host}:${boundPort}/`,
      origin: `${scheme}://${host}:${boundPort}`,
      dataDir,
      sharedDir,
      proc,
      waitForLine: (...args) => proc.waitForLine(...args),
      /** Stops the server with SIGTERM, as Ctrl-C would; resolves with its exit code. */
      stop: () => proc.terminate(),
    };
    return server;
  }
}

/**
 * Starts `parley client <name>` in line mode against `server`, with its own working folder
 * (`dir`, where relative upload paths start), download folder and known-hosts file, and waits
 * until it is connected.
 */
export async function startTerminal(name, server, { downloadDir, knownHosts } = {}) {
  const dir = tempDir(`terminal-${name}`);
  downloadDir ??= path.join(dir, 'downloads');
  knownHosts ??= path.join(dir, 'known_hosts');
  fs.mkdirSync(downloadDir, { recursive: true });
  const argv = [
    'client', name, '127.0.0.1', String(server.port),
    '--download-dir', downloadDir,
    ...(server.tls ? [] : ['--no-tls']),
  ];
  // The known-hosts file is always a temporary one: never the user's own pins.
  const proc = new LineProcess(`terminal ${name}`, argv, {
    cwd: dir,
    env: childEnv({ PARLEY_KNOWN_HOSTS: knownHosts }),
  });
  await proc.waitForLine(/^Connected to /);
  return {
    name,
    dir,
    downloadDir,
    knownHosts,
    proc,
    lines: proc.lines,
    send: (line) => proc.send(line),
    waitForLine: (...args) => proc.waitForLine(...args),
    /** Types /quit, closes stdin and resolves with the exit code. */
    async quit() {
      if (proc.running()) {
        proc.send('/quit');
        proc.proc.stdin.end();
      }
      try {
        return await bounded(proc.exit, WAIT, `${proc.label} quitting`);
      } catch (error) {
        await proc.terminate(1_000).catch(() => {});
        throw error;
      }
    },
  };
}

/**
 * Has a terminal client say each of `texts` in the lobby, in this order, and waits until the
 * server has stored them all: the terminal prints its own message once the server has stored
 * it (protocol section 5.3), though not always in the order they were typed.
 */
export async function terminalSays(terminal, texts) {
  for (const text of texts) terminal.send(text);
  for (const text of texts) {
    await terminal.waitForLine(`[#lobby] ${terminal.name}: ${text}`, WAIT, { fromStart: true });
  }
}

/**
 * Runs a one-shot `parley` command (`admin add ...`) to its end; resolves with its exit code
 * and output. `env` adds variables (PARLEY_PASSWORD).
 */
export async function runParley(args, { env = {} } = {}) {
  const proc = new LineProcess(`parley ${args[0]}`, args, { cwd: tempDir('run'), env: childEnv(env) });
  proc.proc.stdin.end();
  const code = await bounded(proc.exit, WAIT, `parley ${args.join(' ')}`);
  return { code, stdout: proc.lines.join('\n'), stderr: proc.stderr };
}

/** Starts headless Chromium (CHROMIUM, default /usr/bin/chromium). */
export async function launchBrowser() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: WAIT,
  });
  live.browsers.add(browser);
  return browser;
}

/**
 * A new person at the browser: their own context (cookies, storage) and one page. Desktop
 * size unless `viewport` says otherwise; `ignoreHTTPSErrors` for the self-signed certificate.
 */
export async function openPage(browser, { viewport = DESKTOP, ignoreHTTPSErrors = false } = {}) {
  const context = await browser.newContext({ viewport, ignoreHTTPSErrors, acceptDownloads: true });
  context.setDefaultTimeout(WAIT);
  context.setDefaultNavigationTimeout(WAIT);
  const page = await context.newPage();
  const log = { errors: [], console: [], dialogs: [] };
  pageLogs.set(page, log);
  page.on('pageerror', (error) => log.errors.push(String(error)));
  page.on('console', (message) => log.console.push(`${message.type()}: ${message.text()}`));
  // A dialog would block the page; it is recorded (a script ran) and dismissed.
  page.on('dialog', (dialog) => {
    log.dialogs.push(dialog.message());
    dialog.dismiss().catch(() => {});
  });
  live.pages.add(page);
  page.once('close', () => live.pages.delete(page));
  return page;
}

/** What a page reported: uncaught errors, console lines and dialogs it opened. */
export function pageLog(page) {
  return pageLogs.get(page);
}

/** A CSS attribute selector value, quoted. */
export const q = (value) => JSON.stringify(String(value));

/** The selector of a tab: "room:lobby", "dm:bob". */
export const tabSelector = (tab) => `#tabs button.tab[data-tab=${q(tab)}]`;

/** Waits until the page is signed in and its lobby is there. */
export async function waitOnline(page, timeout = WAIT) {
  await page.waitForSelector('#status[data-state="online"]', { timeout });
  await page.waitForSelector(tabSelector('room:lobby'), { timeout });
}

/** Opens `url` and signs in as `name` (with `password` for a registered name). */
export async function signIn(page, url, name, password) {
  await page.goto(url);
  await page.fill('#signin-name', name);
  if (password !== undefined) await page.fill('#signin-password', password);
  await page.click('#signin-submit');
  await waitOnline(page);
}

/**
 * A browser with one page per name, each signed in as that name in its own context (its own
 * cookies), in order; resolves with the pages.
 */
export async function signedInPages(server, names, options) {
  const browser = await launchBrowser();
  const pages = [];
  for (const name of names) {
    const page = await openPage(browser, options);
    await signIn(page, server.url, name);
    pages.push(page);
  }
  return pages;
}

/** The signed-in name the page shows. */
export async function me(page) {
  return (await page.textContent('#me')).trim();
}

/**
 * Waits for a shown message in the timeline (from `from`, if given) whose text is exactly
 * `text`; returns a locator for it, by its data-id. Hidden messages (another tab's, if the
 * page keeps them) do not count.
 */
export async function waitForMessage(page, { from, text }, timeout = WAIT) {
  let handle;
  try {
    handle = await page.waitForFunction(
      ({ from, text }) => {
        for (const message of document.querySelectorAll('#timeline .message')) {
          // A message without its id yet is still on its way (not confirmed as stored).
          if (message.getClientRects().length === 0 || !message.dataset.id) continue;
          if (from !== undefined && message.dataset.from !== from) continue;
          const body = message.querySelector('.message-text');
          if (body && body.textContent === text) return message.dataset.id;
        }
        return false;
      },
      { from, text },
      { timeout },
    );
  } catch (error) {
    const shown = await timelineText(page).catch(() => '(the page is gone)');
    throw new Error(
      `no message ${JSON.stringify(text)}${from === undefined ? '' : ` from ${from}`} with a data-id ` +
        `within ${timeout} ms (${error.message.split('\n')[0]}); the timeline shows:\n${shown}`,
    );
  }
  const id = await handle.jsonValue();
  return page.locator(`#timeline .message[data-id=${q(id)}]`);
}

/** The timeline as text, one line per message or notice, for failure messages. */
export function timelineText(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll('#timeline .message, #timeline .notice')]
      .map((el) =>
        el.classList.contains('message')
          ? `  [${el.dataset.id}] ${el.dataset.from}: ${el.querySelector('.message-text')?.textContent}`
          : `  * ${el.textContent.trim()}`,
      )
      .join('\n'),
  );
}

/** How many shown messages in the timeline have exactly this text. */
export function countMessages(page, text) {
  return page.evaluate(
    (text) =>
      [...document.querySelectorAll('#timeline .message .message-text')].filter(
        (body) => body.textContent === text && body.getClientRects().length > 0,
      ).length,
    text,
  );
}

/** The data-id of every shown message in the timeline, in order. */
export function messageIds(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll('#timeline .message')]
      .filter((message) => message.getClientRects().length > 0)
      .map((message) => message.dataset.id),
  );
}

/** The text of every shown message in the timeline, in order. */
export function messageTexts(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll('#timeline .message')]
      .filter((message) => message.getClientRects().length > 0)
      .map((message) => message.querySelector('.message-text')?.textContent),
  );
}

/** Types `text` into the composer and sends it; waits until it is in the timeline. */
export async function say(page, text) {
  const before = await countMessages(page, text);
  await page.fill('#composer-input', text);
  await page.click('#composer-send');
  await page.waitForFunction(
    ({ text, before }) =>
      [...document.querySelectorAll('#timeline .message .message-text')].filter(
        (body) => body.textContent === text && body.getClientRects().length > 0,
      ).length > before,
    { text, before },
  );
}

/** Selects a tab and waits until it is the selected one. */
export async function openTab(page, tab) {
  await page.click(tabSelector(tab));
  await page.waitForSelector(`${tabSelector(tab)}[aria-selected="true"]`);
}

/** A tab's unread count: 0 when its badge is absent, hidden or empty. */
export async function unreadCount(page, tab) {
  const badge = page.locator(`${tabSelector(tab)} .unread`);
  if ((await badge.count()) === 0 || !(await badge.first().isVisible())) return 0;
  const text = (await badge.first().textContent()).trim();
  return text === '' ? 0 : Number(text);
}

/** Waits until a tab's unread badge shows `count`. */
export async function waitForUnread(page, tab, count, timeout = WAIT) {
  const selector = `${tabSelector(tab)} .unread`;
  await page.waitForFunction(
    ({ selector, count }) => {
      const badge = document.querySelector(selector);
      const shown = badge && badge.getClientRects().length > 0 ? badge.textContent.trim() : '';
      return (shown === '' ? 0 : Number(shown)) === count;
    },
    { selector, count },
    { timeout },
  );
}

/** Shows the files panel (on wide screens it may already be shown). */
export async function openFiles(page) {
  if (!(await page.isVisible('#files'))) await page.click('#files-toggle');
  await page.waitForSelector('#files', { state: 'visible' });
}

/** The selector of an entry of the file list. */
export const entrySelector = (name) => `#files-list .entry[data-name=${q(name)}]`;

/** Moves the focus with Tab (at most `limit` presses) until `selector` has it. */
export async function tabTo(page, selector, limit = 40) {
  for (let presses = 0; presses <= limit; presses++) {
    if (await page.evaluate((s) => document.activeElement?.matches(s) ?? false, selector)) return;
    await page.keyboard.press('Tab');
  }
  throw new Error(`${selector} did not get the focus within ${limit} presses of Tab`);
}

/**
 * The `parley_token` cookie of a page's context, as a Cookie header value. The server sets it
 * for downloads only, out of every script's reach.
 */
export async function sessionCookie(page) {
  return `parley_token=${await sessionToken(page)}`;
}

/** The token of a page's session, read from its download cookie. */
export async function sessionToken(page) {
  const deadline = Date.now() + WAIT;
  for (;;) {
    const cookies = await page.context().cookies();
    const token = cookies.find((cookie) => cookie.name === 'parley_token');
    if (token) {
      assert(token.httpOnly, 'the token cookie is HttpOnly: no script can read it');
      assert(token.path === '/files', `the token cookie goes to downloads only, not to ${token.path}`);
      return token.value;
    }
    // Set by a request the page makes right after signing in.
    if (Date.now() > deadline) {
      assert(false, `no parley_token cookie; the context has: ${cookies.map((c) => c.name).join(', ')}`);
    }
    await page.waitForTimeout(50);
  }
}

/**
 * A raw HTTP request: `target` is sent as written, unlike fetch, whose URL parser would turn
 * `/files/%2e%2e/x` into `/x` before the server could be tested on it. Resolves with status,
 * headers and the body as a Buffer; an upgrade (101) resolves with its headers and closes.
 */
export function request(server, target, { method = 'GET', headers = {}, body } = {}) {
  const client = server.tls ? https : http;
  return bounded(
    new Promise((resolve, reject) => {
      const req = client.request({
        host: server.host,
        port: server.port,
        method,
        path: target,
        headers,
        rejectUnauthorized: false,
      });
      req.on('response', (res) => {
        const chunks = [];
        res.on('data', (chunk) => chunks.push(chunk));
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      });
      req.on('upgrade', (res, socket) => {
        socket.destroy();
        resolve({ status: res.statusCode, headers: res.headers, body: Buffer.alloc(0) });
      });
      req.on('error', reject);
      req.end(body);
    }),
    WAIT,
    `${method} ${target}`,
  );
}

/** Writes `size` random bytes to `dir/name`; returns its path and SHA-256. */
export function randomFile(dir, name, size) {
  const file = path.join(dir, name);
  const hash = createHash('sha256');
  const fd = fs.openSync(file, 'w');
  try {
    for (let written = 0; written < size; ) {
      const chunk = randomBytes(Math.min(1 << 20, size - written));
      fs.writeSync(fd, chunk);
      hash.update(chunk);
      written += chunk.length;
    }
  } finally {
    fs.closeSync(fd);
  }
  return { path: file, sha256: hash.digest('hex') };
}

/** The SHA-256 of a file, streamed. */
export function sha256File(file) {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    fs.createReadStream(file)
      .on('data', (chunk) => hash.update(chunk))
      .on('end', () => resolve(hash.digest('hex')))
      .on('error', reject);
  });
}

/** Names in a folder a person would see: without the server's own `.parley` folder. */
export function visibleNames(dir) {
  return fs.readdirSync(dir).filter((name) => name !== '.parley').sort();
}

/** Saves a full-page screenshot under target/web-artifacts/; returns its path. */
export async function screenshot(page, name) {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, name);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

/**
 * Releases everything the test started; run after each test (`afterEach(finish)`). When the
 * test failed, its pages' screenshots and logs and its processes' output are saved first.
 * A test that passed still fails here if one of its pages threw an uncaught error.
 */
export async function finish(t) {
  if (t && t.passed === false) await saveFailure(t.name).catch((error) => console.error(error));
  const uncaught = [...live.pages].flatMap((page) => pageLogs.get(page).errors);
  await Promise.all(
    [...live.browsers].map((browser) => bounded(browser.close(), WAIT, 'closing the browser').catch(() => {})),
  );
  await Promise.all([...live.processes].map((proc) => proc.terminate().catch(() => {})));
  for (const dir of live.dirs) fs.rmSync(dir, { recursive: true, force: true });
  for (const set of Object.values(live)) set.clear();
  if (t?.passed && uncaught.length > 0) {
    throw new Error(`uncaught errors in the page:\n${uncaught.join('\n')}`);
  }
}

async function saveFailure(testName) {
  const dir = path.join(ARTIFACTS, 'failures');
  fs.mkdirSync(dir, { recursive: true });
  const slug = testName.replace(/[^a-z0-9]+/gi, '-').replace(/^-|-$/g, '').slice(0, 60);
  let index = 0;
  for (const page of live.pages) {
    index += 1;
    const base = path.join(dir, `${slug}-page${index}`);
    await bounded(page.screenshot({ path: `${base}.png`, fullPage: true }), WAIT, 'a screenshot').catch(() => {});
    const log = pageLogs.get(page);
    const text = [`url: ${page.url()}`, '-- errors', ...log.errors, '-- dialogs', ...log.dialogs, '-- console', ...log.console];
    fs.writeFileSync(`${base}.log`, `${text.join('\n')}\n`);
  }
  let number = 0;
  for (const proc of live.processes) {
    number += 1;
    const name = `${number}-${proc.label.replace(/[^a-z0-9]+/gi, '-')}`;
    fs.writeFileSync(path.join(dir, `${slug}-${name}.log`), `${proc.lines.join('\n')}\n-- stderr\n${proc.stderr}`);
  }
  console.error(`the failed test's pages and logs are in ${dir}`);
}
