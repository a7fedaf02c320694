// Shared files through the browser: uploads (several at once, too large, cancelled),
// downloads, files crossing between the browser and the terminal byte for byte, and the HTTP
// routes themselves: a session cookie required, ranges, and no way out of the shared folder.

import test, { afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';

import {
  TEST_TIMEOUT,
  WAIT,
  entrySelector,
  finish,
  launchBrowser,
  openFiles,
  openPage,
  q,
  randomFile,
  request,
  sessionCookie,
  sha256File,
  signIn,
  startServer,
  startTerminal,
  tempDir,
  visibleNames,
  waitUntil,
} from './harness.mjs';

afterEach(finish);

const uploadSelector = (name, state) =>
  `.upload[data-name=${q(name)}]${state === undefined ? '' : `[data-state=${q(state)}]`}`;

/** Waits for an upload's row to reach `state`; on another final state, says which. */
async function waitForUpload(page, name, state, timeout = WAIT) {
  await page.waitForSelector(uploadSelector(name), { timeout });
  await page
    .waitForFunction(
      ({ selector, state }) => {
        const row = document.querySelector(selector);
        const now = row?.dataset.state;
        if (now === state) return true;
        // A different final state will not change: fail now, with the row's text.
        if (['done', 'failed', 'cancelled'].includes(now)) throw new Error(`${now}: ${row.textContent.trim()}`);
        return false;
      },
      { selector: uploadSelector(name), state },
      { timeout },
    )
    .catch((error) => {
      throw new Error(`the upload of ${name} did not end ${state}: ${error.message.split('\n')[0]}`);
    });
}

test('the browser uploads two files at once and the terminal downloads one byte for byte', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer();
  const browser = await launchBrowser();
  const alice = await openPage(browser);
  await signIn(alice, server.url, 'alice');
  const bob = await startTerminal('bob', server);
  await openFiles(alice);

  const local = tempDir('local');
  const notes = randomFile(local, 'notes.txt', 1_234);
  // An odd size: the last chunk of the upload is a partial one.
  const random = randomFile(local, 'random.bin', 3 * 1024 * 1024 + 17);
  await alice.setInputFiles('#upload-input', [notes.path, random.path]);
  await waitForUpload(alice, 'notes.txt', 'done');
  await waitForUpload(alice, 'random.bin', 'done');

  assert.equal(await sha256File(path.join(server.sharedDir, 'random.bin')), random.sha256);
  assert.equal(await sha256File(path.join(server.sharedDir, 'notes.txt')), notes.sha256);
  // Everyone online is told, the terminal included.
  await bob.waitForLine(/^\* alice shared random\.bin \(3\.0 MiB\)$/);
  await alice.waitForSelector(entrySelector('random.bin'));

  bob.send('/download random.bin');
  const [, saved] = await bob.waitForLine(/^Saved (.+): [\d.]+ MiB in .* checksum verified$/);
  assert.equal(saved, path.join(bob.downloadDir, 'random.bin'));
  assert.equal(await sha256File(saved), random.sha256);
});

test('a file the terminal uploads appears in the browser and downloads byte for byte', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer();
  const browser = await launchBrowser();
  const alice = await openPage(browser);
  await signIn(alice, server.url, 'alice');
  await openFiles(alice);
  const bob = await startTerminal('bob', server);

  const original = randomFile(bob.dir, 'x.bin', 2 * 1024 * 1024);
  bob.send('/upload ./x.bin');
  await bob.waitForLine(/^Shared \.\/x\.bin as x\.bin: .* checksum verified$/);
  // Everyone online is told: a notice in the timeline, and the open file list follows by itself.
  await alice.locator('#timeline .notice', { hasText: 'x.bin' }).first().waitFor();
  const entry = alice.locator(entrySelector('x.bin'));
  await entry.waitFor();
  assert.equal(await entry.locator('button.open').count(), 0, 'a file, not a folder');

  const [download] = await Promise.all([alice.waitForEvent('download'), entry.locator('a.download').click()]);
  assert.equal(download.suggestedFilename(), 'x.bin');
  assert.equal(await sha256File(await download.path()), original.sha256);
});

test('files over HTTP need the session cookie, honour ranges and stay inside the shared folder', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer();
  const original = randomFile(server.sharedDir, 'x.bin', 100_000);
  // Outside the shared folder, next to it: what a path escape would reach.
  const secret = 'the secret outside the shared folder';
  fs.writeFileSync(path.join(server.sharedDir, '..', 'secret'), secret);
  fs.symlinkSync(path.join(server.sharedDir, '..', 'secret'), path.join(server.sharedDir, 'link'));
  const browser = await launchBrowser();
  const alice = await openPage(browser);
  await signIn(alice, server.url, 'alice');
  const cookie = await sessionCookie(alice);

  assert.equal((await request(server, '/files/x.bin')).status, 401, 'no cookie, no file');
  assert.equal(
    (await request(server, '/files/x.bin', { headers: { cookie: 'parley_token=forged' } })).status,
    401,
    'a made-up token, no file',
  );

  const whole = await request(server, '/files/x.bin', { headers: { cookie } });
  assert.equal(whole.status, 200);
  assert.ok(whole.body.equals(fs.readFileSync(original.path)), 'the whole file, unchanged');
  assert.match(whole.headers['content-disposition'] ?? '', /x\.bin/);

  const part = await request(server, '/files/x.bin', { headers: { cookie, range: 'bytes=10-19' } });
  assert.equal(part.status, 206);
  assert.equal(part.headers['content-range'], 'bytes 10-19/100000');
  assert.ok(part.body.equals(fs.readFileSync(original.path).subarray(10, 20)), `got ${part.body.length} bytes`);

  for (const target of [
    '/files/..%2Fsecret',
    '/files/%2e%2e/secret',
    '/files/%2E%2E%2Fsecret',
    '/files/../secret',
    '/files/..%2F..%2Fetc%2Fpasswd',
    '/files/%2Fetc%2Fpasswd',
    '/files/link',
  ]) {
    const escape = await request(server, target, { headers: { cookie } });
    assert.ok([400, 403, 404].includes(escape.status), `${target}: ${escape.status}`);
    const body = escape.body.toString('latin1');
    assert.ok(!body.includes(secret) && !body.includes('root:'), `${target} leaked: ${body.slice(0, 200)}`);
  }
});

test('an upload over the size limit is refused with a reason, in the page and over HTTP', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer({ args: ['--max-upload', '1000'] });
  const browser = await launchBrowser();
  const alice = await openPage(browser);
  await signIn(alice, server.url, 'alice');
  await openFiles(alice);
  const cookie = await sessionCookie(alice);

  const local = tempDir('local');
  const big = randomFile(local, 'toolarge.bin', 5_000);
  await alice.setInputFiles('#upload-input', [big.path]);
  await waitForUpload(alice, 'toolarge.bin', 'failed');
  const reason = (await alice.textContent(uploadSelector('toolarge.bin'))).trim();
  assert.match(reason, /too (large|big)|larger|limit|maximum|at most|exceed/i, reason);

  const body = fs.readFileSync(big.path);
  const direct = await request(server, '/upload?folder=&name=direct.bin', {
    method: 'POST',
    headers: { cookie, 'content-type': 'application/octet-stream', 'content-length': body.length },
    body,
  });
  assert.equal(direct.status, 413);
  const anonymous = await request(server, '/upload?folder=&name=anonymous.bin', {
    method: 'POST',
    headers: { 'content-length': 10 },
    body: Buffer.alloc(10),
  });
  assert.equal(anonymous.status, 401, 'no cookie, no upload');
  assert.deepEqual(visibleNames(server.sharedDir), []);
});

test('a cancelled upload leaves nothing in the shared folder', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer();
  const browser = await launchBrowser();
  const alice = await openPage(browser);
  await signIn(alice, server.url, 'alice');
  await openFiles(alice);

  // Large enough to be still on its way when cancelled; sparse, so it costs no disk here.
  const local = tempDir('local');
  const huge = path.join(local, 'huge.bin');
  fs.closeSync(fs.openSync(huge, 'w'));
  fs.truncateSync(huge, 1024 * 1024 * 1024);
  await alice.setInputFiles('#upload-input', [huge]);
  await alice.click(`${uploadSelector('huge.bin')} button.cancel`);
  await waitForUpload(alice, 'huge.bin', 'cancelled');

  // An upload after it completing shows the server has moved on; the cancelled one must not
  // have become a file, and its staged part must be gone.
  const after = randomFile(local, 'after.txt', 100);
  await alice.setInputFiles('#upload-input', [after.path]);
  await waitForUpload(alice, 'after.txt', 'done');
  assert.deepEqual(visibleNames(server.sharedDir), ['after.txt']);
  const staging = path.join(server.sharedDir, '.parley', 'staging');
  await waitUntil(
    () => !fs.existsSync(staging) || fs.readdirSync(staging).length === 0,
    'the cancelled upload\'s staged part being removed',
  );
  assert.equal(await alice.locator(entrySelector('huge.bin')).count(), 0);
});
