// Signing in from the page: a name the server refuses (not allowed, or taken by someone
// online, whatever its case) leaves the page on the sign-in form with the server's own
// sentence, and the same form then signs in with a free name.

import test, { afterEach } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';

import {
  TEST_TIMEOUT,
  finish,
  launchBrowser,
  me,
  openPage,
  runParley,
  startServer,
  startTerminal,
  tempDir,
  waitOnline,
} from './harness.mjs';

afterEach(finish);

/**
 * The sentence the server gives the terminal client for a refused `name`: what the page
 * must show too, word for word.
 */
async function refusal(server, name) {
  const run = await runParley(['client', name, '127.0.0.1', String(server.port), '--no-tls'], {
    env: { PARLEY_KNOWN_HOSTS: path.join(tempDir('known-hosts'), 'known_hosts') },
  });
  assert.notEqual(run.code, 0, `the terminal signed in as ${name}`);
  const match = /refused to sign you in: (.+)$/m.exec(run.stderr);
  assert.ok(match, `no refusal in the terminal's output:\n${run.stderr}`);
  return match[1].trim();
}

/** Submits the form and waits until it has answered with a refusal. */
async function refusedSignIn(page, name) {
  await page.fill('#signin-name', name);
  // The submit handler hides an earlier refusal before the click returns: what shows next is
  // this attempt's answer.
  await page.click('#signin-submit');
  await page.waitForSelector('#signin-error:not([hidden])');
  return (await page.textContent('#signin-error')).trim();
}

/** Asserts that the page shows the sign-in form and nothing of the signed-in screen. */
async function assertSignedOut(page) {
  assert.equal(await page.isVisible('form#signin-form'), true, 'the sign-in form is shown');
  assert.equal(await page.isVisible('#main'), false, 'the chat is not shown');
  assert.equal(await page.isVisible('#account'), false, 'no account is shown');
  assert.equal(await page.getAttribute('#status', 'data-state'), 'offline');
}

test('a refused name shows the server\'s sentence on the form, then a free name signs in', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer();
  await startTerminal('bob', server);
  const notAllowed = await refusal(server, 'bad name!');
  const taken = await refusal(server, 'BOB');
  assert.match(taken, /taken/i);

  const browser = await launchBrowser();
  const page = await openPage(browser);
  await page.goto(server.url);

  assert.equal(await refusedSignIn(page, 'bad name!'), notAllowed);
  await assertSignedOut(page);
  assert.equal(await page.inputValue('#signin-name'), 'bad name!', 'the name stays to be corrected');

  // Names are unique without regard to case: the terminal's bob holds BOB too.
  assert.equal(await refusedSignIn(page, 'BOB'), taken);
  await assertSignedOut(page);

  await page.fill('#signin-name', 'carol');
  await page.click('#signin-submit');
  await waitOnline(page);
  assert.equal(await me(page), 'carol');
  assert.equal(await page.isVisible('#signin-error'), false, 'the refusal is gone');
  assert.equal(await page.isVisible('form#signin-form'), false);
});
