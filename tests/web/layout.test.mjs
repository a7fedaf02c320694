// How the main screen looks, at desktop and phone width (screenshots for a person to review,
// in target/web-artifacts/), and that a phone-width page can be used with the keyboard alone.

import test, { afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';

import {
  PHONE,
  TEST_TIMEOUT,
  entrySelector,
  finish,
  launchBrowser,
  signedInPages,
  openFiles,
  openPage,
  openTab,
  randomFile,
  say,
  screenshot,
  signIn,
  startServer,
  startTerminal,
  tabSelector,
  tabTo,
  waitForMessage,
  waitOnline,
} from './harness.mjs';

afterEach(finish);

/** A shared folder worth looking at: a subfolder and files of a few sizes. */
function fillSharedFolder(dir) {
  fs.mkdirSync(path.join(dir, 'DeepFiles'));
  randomFile(path.join(dir, 'DeepFiles'), 'video1.mp4', 300_000);
  fs.writeFileSync(path.join(dir, 'notes.txt'), 'Meeting notes\n');
  randomFile(dir, 'photo.jpg', 1_500_000);
  randomFile(dir, 'report.pdf', 80_000);
}

test('the main screen at desktop width: chat, a private tab and the files panel', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer();
  fillSharedFolder(server.sharedDir);
  const [alice, bob] = await signedInPages(server, ['alice', 'bob']);
  const carol = await startTerminal('carol', server);

  await say(alice, 'Morning! Has anyone seen the new report?');
  await say(bob, 'Yes, it is in the shared folder: report.pdf');
  carol.send('I will upload the slides too.');
  await waitForMessage(alice, { from: 'carol', text: 'I will upload the slides too.' });
  // A file shared from the terminal: the panel shows who shared it.
  randomFile(carol.dir, 'slides.pdf', 240_000);
  carol.send('/upload ./slides.pdf');
  await carol.waitForLine(/^Shared \.\/slides\.pdf as slides\.pdf/);
  await say(alice, 'Thanks, both of you.');

  carol.send('/msg alice Can you check the numbers on page 3?');
  await alice.waitForSelector(tabSelector('dm:carol'));
  await openTab(alice, 'dm:carol');
  await waitForMessage(alice, { from: 'carol', text: 'Can you check the numbers on page 3?' });
  await say(alice, 'Sure, give me ten minutes.');

  await openFiles(alice);
  await alice.waitForSelector(entrySelector('report.pdf'));
  await alice.waitForSelector(`${entrySelector('slides.pdf')} >> text=carol`);
  await alice.waitForSelector(entrySelector('DeepFiles'));
  const file = await screenshot(alice, 'main.png');
  assert.ok(fs.statSync(file).size > 0);
});

test('at phone width, signing in and talking need only the keyboard', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer();
  fillSharedFolder(server.sharedDir);
  const browser = await launchBrowser();
  const bob = await openPage(browser);
  await signIn(bob, server.url, 'bob');
  await say(bob, 'Welcome! Say something when you are in.');

  const alice = await openPage(browser, { viewport: PHONE });
  await alice.goto(server.url);
  // No clicks from here on: Tab to a control, type, Enter.
  await tabTo(alice, '#signin-name');
  await alice.keyboard.type('alice');
  await alice.keyboard.press('Enter');
  await waitOnline(alice);

  await tabTo(alice, '#composer-input');
  await alice.keyboard.type('Hello from my phone, keyboard only');
  await alice.keyboard.press('Enter');
  await waitForMessage(alice, { from: 'alice', text: 'Hello from my phone, keyboard only' });
  await waitForMessage(bob, { from: 'alice', text: 'Hello from my phone, keyboard only' });
  await waitForMessage(alice, { from: 'bob', text: 'Welcome! Say something when you are in.' });

  // Nothing wider than the phone: no sideways scrolling.
  const overflow = await alice.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow} px wider than the screen`);
  await screenshot(alice, 'main-phone.png');
});
