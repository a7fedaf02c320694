// With TLS on (the default), the browser client is served over HTTPS on the same port as the
// native protocol: two browsers and a terminal client, which pins the self-signed certificate
// on first connection, talk to each other.

import test, { afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import tls from 'node:tls';

import {
  TEST_TIMEOUT,
  finish,
  launchBrowser,
  openPage,
  say,
  signIn,
  startServer,
  startTerminal,
  waitForMessage,
} from './harness.mjs';

afterEach(finish);

test('browsers and a terminal talk over TLS on one port', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer({ tls: true });
  assert.match(server.url, /^https:/);
  // Printed at start, before or after the listening line.
  const [, fingerprint] = await server.waitForLine(/TLS certificate fingerprint \(SHA-256\): (\S+)$/, undefined, {
    fromStart: true,
  });

  // The page comes over HTTPS with the very certificate the server printed (and that native
  // clients pin): one certificate for both protocols.
  const presented = await new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port: server.port, rejectUnauthorized: false }, () => {
      const { fingerprint256 } = socket.getPeerCertificate();
      socket.end();
      resolve(fingerprint256);
    });
    socket.setTimeout(15_000, () => reject(new Error('no TLS handshake within 15 s')));
    socket.on('error', reject);
  });
  assert.equal(presented, fingerprint);

  const browser = await launchBrowser();
  // The certificate is self-signed: the browser is told to accept it, as a person would.
  const alice = await openPage(browser, { ignoreHTTPSErrors: true });
  const bob = await openPage(browser, { ignoreHTTPSErrors: true });
  await signIn(alice, server.url, 'alice');
  await signIn(bob, server.url, 'bob');
  assert.ok(alice.url().startsWith('https://'), alice.url());

  await say(alice, 'hello over https');
  await waitForMessage(bob, { from: 'alice', text: 'hello over https' });
  await say(bob, 'encrypted both ways');
  await waitForMessage(alice, { from: 'bob', text: 'encrypted both ways' });

  const carol = await startTerminal('carol', server);
  const pinned = carol.lines.find((line) => line.startsWith('First connection to'));
  assert.ok(pinned?.includes(fingerprint), `the terminal pinned the printed certificate: ${pinned}`);
  assert.match(fs.readFileSync(carol.knownHosts, 'utf8'), new RegExp(`^127\\.0\\.0\\.1:${server.port} ${fingerprint}$`, 'm'));

  carol.send('hello from the terminal');
  await waitForMessage(alice, { from: 'carol', text: 'hello from the terminal' });
  await waitForMessage(bob, { from: 'carol', text: 'hello from the terminal' });
  await say(alice, 'hello carol');
  await carol.waitForLine('[#lobby] alice: hello carol');
  assert.equal(await carol.quit(), 0);
});
