// Chat in the browser: two people in two browser contexts talk in the lobby, see each other's
// names in different colours, see markup as text, hear of arrivals and departures, and are
// told of messages in tabs they are not looking at.

import test, { afterEach } from 'node:test';
import assert from 'node:assert/strict';

import {
  TEST_TIMEOUT,
  finish,
  launchBrowser,
  signedInPages,
  openPage,
  openTab,
  pageLog,
  say,
  signIn,
  startServer,
  tabSelector,
  unreadCount,
  waitForMessage,
  waitForUnread,
} from './harness.mjs';

afterEach(finish);

/** The computed colour of a message's sender name. */
const nameColour = (message) => message.locator('.message-from').evaluate((el) => getComputedStyle(el).color);

test('two people talk in the lobby, each name in its own colour', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer();
  const [alice, bob] = await signedInPages(server, ['alice', 'bob']);

  await say(alice, 'hello bob');
  const heard = await waitForMessage(bob, { from: 'alice', text: 'hello bob' });
  assert.equal((await heard.locator('.message-from').textContent()).trim(), 'alice');
  assert.equal(await heard.locator('time').count(), 1, 'a message shows when it was sent');

  await say(bob, 'hi alice');
  await waitForMessage(alice, { from: 'bob', text: 'hi alice' });

  for (const page of [alice, bob]) {
    const fromAlice = await waitForMessage(page, { from: 'alice', text: 'hello bob' });
    const fromBob = await waitForMessage(page, { from: 'bob', text: 'hi alice' });
    assert.notEqual(await nameColour(fromAlice), await nameColour(fromBob), 'each sender has a colour');
  }
});

test('markup in a message is shown as text, never run', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer();
  const [alice, bob] = await signedInPages(server, ['alice', 'bob']);

  const nasty = '<img src=x onerror=alert(1)> and <b>bold</b> & <script>alert(2)</script>';
  await say(alice, nasty);
  for (const page of [bob, alice]) {
    const message = await waitForMessage(page, { from: 'alice', text: nasty });
    assert.equal(await message.locator('.message-text').textContent(), nasty);
    assert.equal(await message.locator('.message-text img, .message-text b, .message-text script').count(), 0);
    assert.deepEqual(pageLog(page).dialogs, [], 'no script from the message ran');
  }
  assert.equal(await bob.locator('#timeline img[src="x"]').count(), 0);
});

test('arrivals and departures are announced, and the list of who is online follows', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer();
  const browser = await launchBrowser();
  const bob = await openPage(browser);
  const alice = await openPage(browser);
  await signIn(bob, server.url, 'bob');

  // Notices naming alice are counted, so that the next one can be told from the earlier ones.
  const aliceNotices = () =>
    [...document.querySelectorAll('#timeline .notice')].filter((n) => n.textContent.includes('alice')).length;
  await signIn(alice, server.url, 'alice');
  await bob.waitForSelector('#online button.user[data-name="alice"]');
  await bob.waitForFunction(aliceNotices);
  const before = await bob.evaluate(aliceNotices);

  await alice.click('#signout');
  await alice.waitForSelector('form#signin-form', { state: 'visible' });
  await bob.waitForSelector('#online button.user[data-name="alice"]', { state: 'detached' });
  await bob.waitForFunction(
    (before) =>
      [...document.querySelectorAll('#timeline .notice')].filter((n) => n.textContent.includes('alice')).length >
      before,
    before,
  );
});

test('a message in a tab not being looked at is counted as unread', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer();
  const [alice, bob] = await signedInPages(server, ['alice', 'bob']);

  // Bob turns to a private conversation with alice: the lobby is no longer in view.
  await bob.click('#online button.user[data-name="alice"]');
  await bob.waitForSelector(`${tabSelector('dm:alice')}[aria-selected="true"]`);
  assert.notEqual(await bob.getAttribute(tabSelector('room:lobby'), 'aria-selected'), 'true');
  assert.equal(await unreadCount(bob, 'room:lobby'), 0);

  await say(alice, 'anyone in the lobby?');
  await waitForUnread(bob, 'room:lobby', 1);

  await openTab(bob, 'room:lobby');
  await waitForMessage(bob, { from: 'alice', text: 'anyone in the lobby?' });
  await waitForUnread(bob, 'room:lobby', 0);
});
