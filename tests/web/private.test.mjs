// Private messages between the browser and the terminal: a message from a terminal user opens
// a counted tab in the browser, and the browser's answer reaches the terminal.

import test, { afterEach } from 'node:test';
import assert from 'node:assert/strict';

import {
  TEST_TIMEOUT,
  finish,
  openTab,
  say,
  signedInPages,
  startServer,
  startTerminal,
  tabSelector,
  waitForMessage,
  waitForUnread,
} from './harness.mjs';

afterEach(finish);

test('a terminal user and a browser user talk privately', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer();
  const [alice] = await signedInPages(server, ['alice']);
  const bob = await startTerminal('bob', server);
  await alice.waitForSelector('#online button.user[data-name="bob"]');

  bob.send('/msg alice hi from the terminal');
  await bob.waitForLine('[private to alice] hi from the terminal');
  // Alice is looking at the lobby: the conversation appears as a tab with one unread message.
  await alice.waitForSelector(tabSelector('dm:bob'));
  await waitForUnread(alice, 'dm:bob', 1);
  await openTab(alice, 'dm:bob');
  await waitForMessage(alice, { from: 'bob', text: 'hi from the terminal' });
  await waitForUnread(alice, 'dm:bob', 0);

  // Back in the lobby, she answers by choosing bob in the list of who is online.
  await openTab(alice, 'room:lobby');
  await alice.click('#online button.user[data-name="bob"]');
  await alice.waitForSelector(`${tabSelector('dm:bob')}[aria-selected="true"]`);
  await say(alice, 'hello from the browser');
  await waitForMessage(alice, { from: 'alice', text: 'hello from the browser' });
  await bob.waitForLine('[private from alice] hello from the browser');
  // Private means private: the lobby, once shown again (bob's lobby message proves it is),
  // shows neither of the two.
  bob.send('and hello lobby');
  await openTab(alice, 'room:lobby');
  await waitForMessage(alice, { from: 'bob', text: 'and hello lobby' });
  const lobbyTexts = await alice.evaluate(() =>
    [...document.querySelectorAll('#timeline .message .message-text')]
      .filter((el) => el.getClientRects().length > 0)
      .map((el) => el.textContent),
  );
  assert.ok(!lobbyTexts.includes('hello from the browser'), `the lobby shows ${JSON.stringify(lobbyTexts)}`);
  assert.ok(!lobbyTexts.includes('hi from the terminal'), `the lobby shows ${JSON.stringify(lobbyTexts)}`);

  assert.equal(await bob.quit(), 0);
});
