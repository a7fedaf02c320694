// Shared files through the browser: browsing folders, uploads (several at once, dropped on
// the panel, with their progress, too large, cancelled), downloads, files crossing between the
// browser and the terminal byte for byte, file names shown as text, and the HTTP routes
// themselves: a session cookie required, ranges, and no way out of the shared folder.

import test, { afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';

import {
  TEST_TIMEOUT,
  WAIT,
  entrySelector,
  finish,
  signedInPages,
  openFiles,
  pageLog,
  q,
  randomFile,
  request,
  sessionCookie,
  sessionToken,
  sha256File,
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

/** The breadcrumb's names, top first, and the one marked as the folder on screen. */
function breadcrumb(page) {
  return page.evaluate(() => ({
    names: [...document.querySelectorAll('#files-path li')].map((li) => li.textContent.trim()),
    current: document.querySelector('#files-path [aria-current="location"]')?.textContent.trim(),
  }));
}

/** Waits until the file panel shows the folder named `label` ("All files" for the top). */
async function waitForFolder(page, label) {
  await page.waitForFunction(
    (label) => document.querySelector('#files-path [aria-current="location"]')?.textContent.trim() === label,
    label,
  );
}

/** Clicks a file's download link and returns the downloaded bytes. */
async function downloadEntry(page, name) {
  const link = page.locator(`${entrySelector(name)} a.download`);
  const [download] = await Promise.all([page.waitForEvent('download'), link.click()]);
  return fs.readFileSync(await download.path());
}

test('the file list opens folders, shows sizes, uploaders and times, and its breadcrumb leads back', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer();
  const deeper = path.join(server.sharedDir, 'Deep', 'Deeper');
  fs.mkdirSync(deeper, { recursive: true });
  const inside = randomFile(deeper, 'inside.bin', 1.5 * 1024 * 1024);
  const [alice] = await signedInPages(server, ['alice']);
  await openFiles(alice);

  const folder = alice.locator(entrySelector('Deep'));
  await folder.waitFor();
  assert.equal(await folder.getAttribute('data-folder'), 'true');
  assert.equal(await folder.locator('a.download').count(), 0, 'a folder, not a file');
  assert.deepEqual(await breadcrumb(alice), { names: ['All files'], current: 'All files' });

  // A file the terminal shares shows who shared it and when.
  const bob = await startTerminal('bob', server);
  fs.writeFileSync(path.join(bob.dir, 'from-bob.txt'), 'x'.repeat(2_000));
  const before = Date.now();
  bob.send('/upload ./from-bob.txt');
  await bob.waitForLine(/^Shared \.\/from-bob\.txt as from-bob\.txt: .* checksum verified$/);
  const shared = alice.locator(entrySelector('from-bob.txt'));
  await shared.waitFor();
  assert.equal(await shared.getAttribute('data-folder'), 'false');
  assert.equal((await shared.locator('.entry-uploader').textContent()).trim(), 'bob');
  assert.equal((await shared.locator('.entry-size').textContent()).trim(), '2.0 KB');
  const time = shared.locator('time.entry-time');
  assert.notEqual((await time.textContent()).trim(), '', 'a time is shown');
  const modified = Date.parse(await time.getAttribute('datetime'));
  // The file system's clock may round down to the second.
  assert.ok(modified >= before - 2_000 && modified <= Date.now() + 2_000, new Date(modified).toISOString());
  await alice.waitForFunction(() => document.querySelector('#files-summary').textContent === '1 folder, 1 file, 2.0 KB');

  await folder.locator('button.open').click();
  await waitForFolder(alice, 'Deep');
  assert.deepEqual(await breadcrumb(alice), { names: ['All files', 'Deep'], current: 'Deep' });
  assert.equal(await alice.locator(entrySelector('from-bob.txt')).count(), 0, 'the top folder\'s files are gone');
  await alice.locator(`${entrySelector('Deeper')}[data-folder="true"] button.open`).click();
  await waitForFolder(alice, 'Deeper');
  assert.deepEqual(await breadcrumb(alice), { names: ['All files', 'Deep', 'Deeper'], current: 'Deeper' });
  const file = alice.locator(entrySelector('inside.bin'));
  assert.equal(await file.getAttribute('data-folder'), 'false');
  assert.equal((await file.locator('.entry-size').textContent()).trim(), '1.5 MB');
  assert.equal(await file.locator('.entry-uploader').count(), 0, 'put there on the server, not shared by anyone');
  assert.equal(await file.locator('time.entry-time').count(), 1);
  assert.equal(await alice.textContent('#files-summary'), '0 folders, 1 file, 1.5 MB');
  assert.ok((await downloadEntry(alice, 'inside.bin')).equals(fs.readFileSync(inside.path)), 'two folders down');

  // Back up one folder, then to the top, by the breadcrumb.
  await alice.click('#files-path button[data-folder="Deep"]');
  await waitForFolder(alice, 'Deep');
  await alice.locator(entrySelector('Deeper')).waitFor();
  await alice.click('#files-path button[data-folder=""]');
  await waitForFolder(alice, 'All files');
  assert.deepEqual(await breadcrumb(alice), { names: ['All files'], current: 'All files' });
  await alice.locator(entrySelector('Deep')).waitFor();
  await alice.locator(entrySelector('from-bob.txt')).waitFor();
});

test('files dropped on the panel are uploaded, byte for byte', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer();
  const [alice] = await signedInPages(server, ['alice']);
  await openFiles(alice);

  const files = [
    { name: 'dropped note.txt', bytes: randomBytes(1_000) },
    { name: 'dropped.bin', bytes: randomBytes(300_001) },
  ];
  // What a drag from the desktop carries: a DataTransfer holding File objects.
  const dataTransfer = await alice.evaluateHandle((files) => {
    const transfer = new DataTransfer();
    for (const { name, base64 } of files) {
      const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
      transfer.items.add(new File([bytes], name, { type: 'application/octet-stream' }));
    }
    return transfer;
  }, files.map(({ name, bytes }) => ({ name, base64: bytes.toString('base64') })));
  // A drop the page does not take would make the browser leave the page to show the file.
  await alice.evaluate(() => {
    window.addEventListener('drop', (e) => {
      window.dropTaken = e.defaultPrevented;
    });
  });

  const dragging = () => alice.evaluate(() => document.querySelector('#files').classList.contains('dragging'));
  await alice.dispatchEvent('#files', 'dragenter', { dataTransfer });
  assert.equal(await dragging(), true, 'the panel shows that it takes the drop');
  await alice.dispatchEvent('#files', 'dragover', { dataTransfer });
  await alice.dispatchEvent('#files', 'drop', { dataTransfer });
  assert.equal(await alice.evaluate(() => window.dropTaken), true, 'the page took the drop');
  assert.equal(await dragging(), false);

  for (const { name } of files) await waitForUpload(alice, name, 'done');
  assert.deepEqual(visibleNames(server.sharedDir), files.map(({ name }) => name).sort());
  for (const { name, bytes } of files) {
    assert.ok(fs.readFileSync(path.join(server.sharedDir, name)).equals(bytes), `${name} differs`);
  }
});

test('an upload shows its progress on the way, then is done', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer();
  const [alice] = await signedInPages(server, ['alice']);
  await openFiles(alice);

  // Unthrottled, 64 MiB crossed the loopback in under half a second with only two progress
  // events on a two-core machine, and a faster one could show none: the page's upload is
  // slowed down instead (Chromium's emulated network throttles request bodies too), to about
  // a second.
  const size = 4 * 1024 * 1024;
  const cdp = await alice.context().newCDPSession(alice);
  await cdp.send('Network.enable');
  await cdp.send('Network.emulateNetworkConditions', {
    offline: false,
    latency: 0,
    downloadThroughput: -1,
    uploadThroughput: size,
  });
  // Every value the bar and the status text take, as the page shows them.
  await alice.evaluate(() => {
    window.progressSeen = [];
    window.statusSeen = [];
    new MutationObserver((records) => {
      for (const record of records) {
        const row = record.target.parentElement?.closest('.upload') ?? record.target.closest?.('.upload');
        const bar = row?.querySelector('progress');
        if (bar) window.progressSeen.push([bar.value, bar.max]);
        const status = row?.querySelector('.upload-status')?.textContent;
        if (status) window.statusSeen.push(status);
      }
    }).observe(document.querySelector('#uploads'), {
      subtree: true,
      childList: true,
      characterData: true,
      attributes: true,
    });
  });

  const local = tempDir('local');
  const big = randomFile(local, 'big.bin', size);
  await alice.setInputFiles('#upload-input', [big.path]);
  await waitForUpload(alice, 'big.bin', 'done');

  const seen = await alice.evaluate(() => window.progressSeen);
  const between = seen.filter(([value, max]) => value > 0 && value < max);
  assert.ok(between.length > 0, `no value between 0 and the end among ${JSON.stringify(seen)}`);
  for (const [value, max] of between) assert.equal(max, size, `the bar's end is the file's size: ${value}/${max}`);
  const values = seen.map(([value]) => value);
  assert.deepEqual(values, [...values].sort((a, b) => a - b), 'the bar never goes back');
  const statuses = await alice.evaluate(() => window.statusSeen);
  assert.ok(statuses.some((text) => /^\d+%$/.test(text)), `no percentage in ${JSON.stringify([...new Set(statuses)])}`);
  const bar = alice.locator(`${uploadSelector('big.bin')} progress`);
  assert.equal(await bar.evaluate((el) => [el.value, el.max].join('/')), `${size}/${size}`, 'full once done');
  assert.equal(await sha256File(path.join(server.sharedDir, 'big.bin')), big.sha256);
});

test('file names with markup are shown as text: in the shared notice, the lists, and they download', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer();
  const [alice] = await signedInPages(server, ['alice']);
  await openFiles(alice);
  const bob = await startTerminal('bob', server);

  // The terminal cannot name a file with a space (its /upload splits words) nor anyone a '/':
  // this is the most markup a terminal's file name can carry, an entity included.
  const fromBob = '<b>bold<b>&amp;.txt';
  fs.writeFileSync(path.join(bob.dir, fromBob), 'shared by the terminal\n');
  bob.send(`/upload ./${fromBob}`);
  await bob.waitForLine(/^Shared .* checksum verified$/);

  // Everyone else online is told, in the tab in view: who, which file (a link to it), how big.
  const notice = await alice.waitForFunction(
    (name) =>
      [...document.querySelectorAll('#timeline .notice')].find((notice) =>
        [...notice.querySelectorAll('a')].some((link) => link.textContent === name),
      ),
    fromBob,
  );
  const noticeText = await notice.evaluate((el) => el.querySelector('.notice-text').textContent);
  assert.equal(noticeText, `bob shared ${fromBob} (23 B)`);
  assert.equal(await notice.evaluate((el) => el.querySelectorAll('b').length), 0, 'no element made from the name');
  const entry = alice.locator(entrySelector(fromBob));
  await entry.waitFor();
  assert.equal(await entry.locator('a.download').textContent(), fromBob);
  assert.equal((await entry.locator('.entry-uploader').textContent()).trim(), 'bob');
  assert.equal(
    await notice.evaluate((el) => el.querySelector('a').getAttribute('href')),
    await entry.locator('a.download').getAttribute('href'),
    'the notice links to the file',
  );

  // The page can name a file anything allowed, spaces included: an image that would run a script.
  const fromAlice = '<img src=x onerror=alert(1)>.txt';
  const local = tempDir('local');
  const original = randomFile(local, fromAlice, 5_000);
  await alice.setInputFiles('#upload-input', [original.path]);
  await waitForUpload(alice, fromAlice, 'done');
  assert.equal(await alice.locator(`${uploadSelector(fromAlice)} .upload-name`).textContent(), fromAlice);
  await alice.locator(entrySelector(fromAlice)).waitFor();
  assert.equal(await alice.locator(`${entrySelector(fromAlice)} a.download`).textContent(), fromAlice);
  // The page's own notice of its upload names it the same way.
  await alice.waitForFunction(
    (name) => [...document.querySelectorAll('#timeline .notice a')].some((link) => link.textContent === name),
    fromAlice,
  );
  assert.deepEqual(visibleNames(server.sharedDir), [fromBob, fromAlice].sort());

  const made = alice.locator('#files-list img, #files-list b, #uploads img, #timeline img, #timeline b');
  assert.equal(await made.count(), 0, 'no element made from a file name');
  assert.deepEqual(pageLog(alice).dialogs, [], 'no script from a file name ran');
  assert.ok((await downloadEntry(alice, fromBob)).equals(fs.readFileSync(path.join(bob.dir, fromBob))));
  assert.ok((await downloadEntry(alice, fromAlice)).equals(fs.readFileSync(original.path)));
});

test('the browser uploads two files at once and the terminal downloads one byte for byte', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer();
  const [alice] = await signedInPages(server, ['alice']);
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
  const [alice] = await signedInPages(server, ['alice']);
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
  const [alice] = await signedInPages(server, ['alice']);
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
  const [alice] = await signedInPages(server, ['alice']);
  await openFiles(alice);
  const token = await sessionToken(alice);

  const local = tempDir('local');
  const big = randomFile(local, 'toolarge.bin', 5_000);
  await alice.setInputFiles('#upload-input', [big.path]);
  await waitForUpload(alice, 'toolarge.bin', 'failed');
  const reason = (await alice.textContent(uploadSelector('toolarge.bin'))).trim();
  assert.match(reason, /too (large|big)|larger|limit|maximum|at most|exceed/i, reason);

  const body = fs.readFileSync(big.path);
  const direct = await request(server, '/upload?folder=&name=direct.bin', {
    method: 'POST',
    headers: { 'x-parley-token': token, 'content-type': 'application/octet-stream', 'content-length': body.length },
    body,
  });
  assert.equal(direct.status, 413);
  // The cookie alone does not upload: pages of other ports of this host can send it too.
  const cookieOnly = await request(server, '/upload?folder=&name=cookie.bin', {
    method: 'POST',
    headers: { cookie: `parley_token=${token}`, 'content-length': 10 },
    body: Buffer.alloc(10),
  });
  assert.equal(cookieOnly.status, 401, 'a cookie is not enough to upload');
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
  const [alice] = await signedInPages(server, ['alice']);
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

test('a page of another port of this host can neither upload as the user nor read the token', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer();
  const [alice] = await signedInPages(server, ['alice']);
  await sessionToken(alice);
  // Another site on the same host, in alice's browser: cookies do not tell ports apart, and
  // SameSite counts the other port as the same site.
  const other = http.createServer((_, response) => {
    response.writeHead(200, { 'content-type': 'text/html' });
    response.end('<!doctype html><title>another site</title>');
  });
  await new Promise((resolve) => other.listen(0, '127.0.0.1', resolve));
  try {
    const page = await alice.context().newPage();
    await page.goto(`http://127.0.0.1:${other.address().port}/`);
    const seen = await page.evaluate(async (target) => {
      // no-cors: the answer is hidden from this page, but the request is made, cookies and all.
      const made = await fetch(`${target}/upload?folder=&name=forged.txt`, {
        method: 'POST',
        mode: 'no-cors',
        credentials: 'include',
        body: 'forged by another site',
      }).then(() => 'answered', (error) => String(error));
      return { cookies: document.cookie, made };
    }, server.origin);
    assert.equal(seen.made, 'answered', 'the request reached the server');
    assert.ok(!seen.cookies.includes('parley_token'), `the other page read: ${seen.cookies}`);
    assert.deepEqual(visibleNames(server.sharedDir), [], 'nothing was uploaded');
  } finally {
    other.close();
  }
});
