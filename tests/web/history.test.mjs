// Paging back through history: a page entering a room is shown its backlog, the server's last
// few messages, and "Load earlier messages" fetches the older ones until the beginning of the
// conversation, each message in its place and once.

import test, { afterEach } from 'node:test';
import assert from 'node:assert/strict';

import {
  TEST_TIMEOUT,
  finish,
  signedInPages,
  messageIds,
  messageTexts,
  startServer,
  startTerminal,
  terminalSays,
  timelineText,
  waitForMessage,
} from './harness.mjs';

afterEach(finish);

test('the backlog shows the last messages and "Load earlier messages" the rest, in order, once', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer({ args: ['--backlog', '5'] });
  const bob = await startTerminal('bob', server);
  const said = Array.from({ length: 12 }, (_, i) => `message ${i + 1}`);
  await terminalSays(bob, said);

  const [alice] = await signedInPages(server, ['alice']);
  await waitForMessage(alice, { from: 'bob', text: 'message 12' });
  // The backlog comes as one event: with its newest message shown, all of it is.
  assert.deepEqual(await messageTexts(alice), said.slice(-5), await timelineText(alice));
  assert.equal(await alice.isVisible('#timeline-start'), false, 'the beginning is not shown yet');
  assert.equal((await alice.textContent('#load-earlier')).trim(), 'Load earlier messages');

  // Each click fetches one page; the button goes once a page comes back empty.
  for (let clicks = 0; await alice.isVisible('#load-earlier'); clicks += 1) {
    assert.ok(clicks < 5, `still not at the beginning after ${clicks} clicks:\n${await timelineText(alice)}`);
    await alice.click('#load-earlier');
    await alice.waitForFunction(() => {
      const button = document.querySelector('#load-earlier');
      return button.hidden || !button.disabled;
    });
  }
  await alice.waitForSelector('#timeline-start', { state: 'visible' });

  assert.deepEqual(await messageTexts(alice), said, await timelineText(alice));
  const ids = (await messageIds(alice)).map(Number);
  assert.equal(new Set(ids).size, said.length, `an id shown twice: ${ids.join(', ')}`);
  assert.deepEqual(ids, [...ids].sort((a, b) => a - b), 'in id order');
});

test('a conversation with nothing older offers no "Load earlier messages"', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer();
  const bob = await startTerminal('bob', server);
  const said = ['one', 'two', 'three'];
  await terminalSays(bob, said);

  // The whole room fits in the backlog: the page shows the beginning at once.
  const [alice] = await signedInPages(server, ['alice']);
  await waitForMessage(alice, { from: 'bob', text: 'three' });
  await alice.waitForSelector('#timeline-start', { state: 'visible' });
  assert.equal(await alice.isVisible('#load-earlier'), false);
  assert.deepEqual(await messageTexts(alice), said);

  // A private conversation opened by a message: that message is all there is.
  bob.send('/msg alice just us');
  await alice.click('#tabs button.tab[data-tab="dm:bob"]');
  await waitForMessage(alice, { from: 'bob', text: 'just us' });
  await alice.waitForSelector('#timeline-start', { state: 'visible' });
  assert.equal(await alice.isVisible('#load-earlier'), false);

  // An empty room too.
  await alice.fill('#join-room', 'quiet');
  await alice.click('#join-submit');
  await alice.waitForSelector('#tabs button.tab[data-tab="room:quiet"][aria-selected="true"]');
  await alice.waitForSelector('#timeline-start', { state: 'visible' });
  assert.equal(await alice.isVisible('#load-earlier'), false);
});
