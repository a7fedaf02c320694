// Coming back: a reloaded page is signed in again with its conversation (a registered name
// after its password, at most), a page whose server restarted reconnects by itself, keeping
// what it showed, each message once, and a page cut off for a while catches up on everything
// said meanwhile, more than the backlog included.

import test, { afterEach } from 'node:test';
import assert from 'node:assert/strict';

import {
  RECONNECT_WAIT,
  TEST_TIMEOUT,
  WAIT,
  bounded,
  countMessages,
  finish,
  launchBrowser,
  signedInPages,
  me,
  messageIds,
  messageTexts,
  openPage,
  runParley,
  say,
  startServer,
  startTerminal,
  tabSelector,
  terminalSays,
  timelineText,
  waitForMessage,
  waitOnline,
} from './harness.mjs';

afterEach(finish);

/** Records every state the status passes through in `window.statesSeen`: some are brief. */
function recordStates(page) {
  return page.evaluate(() => {
    window.statesSeen = [];
    const record = () => window.statesSeen.push(document.querySelector('#status')?.dataset.state);
    new MutationObserver(record).observe(document.body, {
      subtree: true,
      childList: true,
      attributes: true,
      attributeFilter: ['data-state'],
    });
  });
}

/**
 * Cuts `page` off from `server` and restarts the server behind its back. Offline, Chromium
 * fails every new WebSocket but does not close the open one: it holds its traffic, the close
 * included, until the network is back. So the server is stopped (which closes the page's
 * connection, as a lost network would) and started again on the same port and folders while
 * the page cannot reach it; `context.setOffline(false)` then delivers the close, and the page
 * has to notice it and reconnect by itself. Returns the new server.
 */
async function restartWhileOffline(page, server, args) {
  await page.context().setOffline(true);
  assert.equal(await server.stop(), 0, 'SIGTERM stops the server cleanly');
  return startServer({ port: server.port, dataDir: server.dataDir, sharedDir: server.sharedDir, args });
}

/** Brings the page's network back and waits until it has reconnected by itself. */
async function backOnline(page) {
  await page.context().setOffline(false);
  await page.waitForFunction(() => window.statesSeen.includes('reconnecting'), null, { timeout: RECONNECT_WAIT });
  await waitOnline(page, RECONNECT_WAIT);
}

/** Asserts that the timeline shows exactly `texts`, in this order, in increasing id order. */
async function assertTimeline(page, texts) {
  assert.deepEqual(await messageTexts(page), texts, await timelineText(page));
  const ids = (await messageIds(page)).map(Number);
  assert.deepEqual(ids, [...ids].sort((a, b) => a - b), `not in id order: ${ids.join(', ')}`);
}

/** Asserts that no message is shown twice. */
async function assertNoDuplicates(page) {
  const ids = await messageIds(page);
  const repeated = ids.filter((id, i) => ids.indexOf(id) !== i);
  assert.deepEqual(repeated, [], `messages shown more than once: ${repeated.join(', ')}`);
}

test('a reloaded page is signed in again as the same guest, with the conversation', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer();
  const [alice] = await signedInPages(server, ['alice']);
  const bob = await startTerminal('bob', server);
  await say(alice, 'before the reload');
  bob.send('hello alice');
  await waitForMessage(alice, { from: 'bob', text: 'hello alice' });

  await alice.reload();
  await waitOnline(alice);
  assert.equal(await me(alice), 'alice');
  assert.equal(await alice.isVisible('form#signin-form'), false, 'a guest is not asked again');
  await alice.waitForSelector(`${tabSelector('room:lobby')}[aria-selected="true"]`);
  await waitForMessage(alice, { from: 'alice', text: 'before the reload' });
  await waitForMessage(alice, { from: 'bob', text: 'hello alice' });
  await assertNoDuplicates(alice);

  // And the conversation goes on, both ways.
  bob.send('welcome back');
  await waitForMessage(alice, { from: 'bob', text: 'welcome back' });
  await say(alice, 'thanks');
  await bob.waitForLine('[#lobby] alice: thanks');
});

test('a registered name needs its password, before a reload and after', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer();
  // An administrator adds the account while the server runs.
  const password = 'correct horse battery staple';
  const added = await runParley(['admin', 'add', 'dora', '--data-dir', server.dataDir], {
    env: { PARLEY_PASSWORD: password },
  });
  assert.equal(added.code, 0, added.stderr);
  const browser = await launchBrowser();
  const dora = await openPage(browser);

  await dora.goto(server.url);
  await dora.fill('#signin-name', 'dora');
  await dora.fill('#signin-password', 'not the password');
  await dora.click('#signin-submit');
  await dora.waitForSelector('#signin-error', { state: 'visible' });
  assert.notEqual((await dora.textContent('#signin-error')).trim(), '', 'the refusal says why');
  assert.notEqual(await dora.getAttribute('#status', 'data-state'), 'online');

  await dora.fill('#signin-password', password);
  await dora.click('#signin-submit');
  await waitOnline(dora);
  assert.equal(await me(dora), 'dora');
  await say(dora, 'signed in with my password');

  // After a reload the page is either signed in again (its session still valid) or asks for
  // the password, the name already filled in, saying at most that the password is needed.
  await dora.reload();
  await dora.waitForFunction(
    () =>
      document.querySelector('#status')?.dataset.state === 'online' ||
      document.querySelector('#signin-form')?.checkVisibility(),
  );
  if (await dora.isVisible('#signin-form')) {
    assert.equal(await dora.inputValue('#signin-name'), 'dora');
    if (await dora.isVisible('#signin-error')) assert.match(await dora.textContent('#signin-error'), /password/i);
    await dora.fill('#signin-password', password);
    await dora.click('#signin-submit');
  }
  await waitOnline(dora);
  assert.equal(await me(dora), 'dora');
  await waitForMessage(dora, { from: 'dora', text: 'signed in with my password' });
});

test('a page reconnects by itself after the server restarts, each message shown once', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer();
  const [alice] = await signedInPages(server, ['alice']);
  const bob = await startTerminal('bob', server);
  await say(alice, 'before the restart');
  bob.send('from the terminal before');
  await waitForMessage(alice, { from: 'bob', text: 'from the terminal before' });

  await recordStates(alice);
  assert.equal(await server.stop(), 0, 'SIGTERM stops the server cleanly');
  assert.equal(await bounded(bob.proc.exit, WAIT, 'the terminal client leaving'), 3, 'the terminal was told');
  await alice.waitForFunction(() => window.statesSeen.includes('reconnecting'));

  const again = await startServer({ port: server.port, dataDir: server.dataDir, sharedDir: server.sharedDir });
  await waitOnline(alice, RECONNECT_WAIT);
  assert.equal(await me(alice), 'alice');

  const carol = await startTerminal('carol', again);
  carol.send('after the restart');
  await waitForMessage(alice, { from: 'carol', text: 'after the restart' });
  await say(alice, 'still here');
  await carol.waitForLine('[#lobby] alice: still here');

  assert.equal(await countMessages(alice, 'before the restart'), 1);
  assert.equal(await countMessages(alice, 'from the terminal before'), 1);
  await assertNoDuplicates(alice);
});

test('a page cut off for a while catches up on all it missed, more than the backlog, each once', { timeout: TEST_TIMEOUT }, async () => {
  // A backlog of 5 cannot bring back the 8 messages missed: the page has to ask for history.
  const server = await startServer({ args: ['--backlog', '5'] });
  const [alice] = await signedInPages(server, ['alice']);
  const bob = await startTerminal('bob', server);
  await say(alice, 'before the cut');
  bob.send('from the terminal before');
  await waitForMessage(alice, { from: 'bob', text: 'from the terminal before' });
  await recordStates(alice);

  const again = await restartWhileOffline(alice, server, ['--backlog', '5']);
  const carol = await startTerminal('carol', again);
  const missed = Array.from({ length: 8 }, (_, i) => `missed ${i + 1}`);
  // All of it is stored, history, by the time the page is back.
  await terminalSays(carol, missed);
  assert.equal(await countMessages(alice, 'missed 8'), 0, 'the page was cut off');

  await backOnline(alice);
  assert.equal(await me(alice), 'alice');
  for (const text of missed) await waitForMessage(alice, { from: 'carol', text });
  await assertTimeline(alice, ['before the cut', 'from the terminal before', ...missed]);
  await assertNoDuplicates(alice);

  // Signed in for real, not only showing history: the conversation goes on.
  await say(alice, 'back again');
  await carol.waitForLine('[#lobby] alice: back again');
});

test('a page that had shown no message yet catches up on all said while it was cut off', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer({ args: ['--backlog', '5'] });
  const [alice] = await signedInPages(server, ['alice']);
  await recordStates(alice);

  const again = await restartWhileOffline(alice, server, ['--backlog', '5']);
  const carol = await startTerminal('carol', again);
  const missed = Array.from({ length: 8 }, (_, i) => `missed ${i + 1}`);
  await terminalSays(carol, missed);

  await backOnline(alice);
  for (const text of missed) await waitForMessage(alice, { from: 'carol', text });
  await assertTimeline(alice, missed);
  await assertNoDuplicates(alice);
});
