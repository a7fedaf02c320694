// Coming back: a reloaded page is signed in again with its conversation (a registered name
// after its password, at most), and a page whose server restarted reconnects by itself,
// keeping what it showed, each message once.

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
  me,
  messageIds,
  openPage,
  runParley,
  say,
  signIn,
  startServer,
  startTerminal,
  tabSelector,
  waitForMessage,
  waitOnline,
} from './harness.mjs';

afterEach(finish);

/** Asserts that no message is shown twice. */
async function assertNoDuplicates(page) {
  const ids = await messageIds(page);
  const repeated = ids.filter((id, i) => ids.indexOf(id) !== i);
  assert.deepEqual(repeated, [], `messages shown more than once: ${repeated.join(', ')}`);
}

test('a reloaded page is signed in again as the same guest, with the conversation', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer();
  const browser = await launchBrowser();
  const alice = await openPage(browser);
  await signIn(alice, server.url, 'alice');
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
  const browser = await launchBrowser();
  const alice = await openPage(browser);
  await signIn(alice, server.url, 'alice');
  const bob = await startTerminal('bob', server);
  await say(alice, 'before the restart');
  bob.send('from the terminal before');
  await waitForMessage(alice, { from: 'bob', text: 'from the terminal before' });

  // Every state the status passes through is recorded: "reconnecting" may be brief.
  await alice.evaluate(() => {
    window.statesSeen = [];
    const record = () => window.statesSeen.push(document.querySelector('#status')?.dataset.state);
    new MutationObserver(record).observe(document.body, {
      subtree: true,
      childList: true,
      attributes: true,
      attributeFilter: ['data-state'],
    });
  });
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
