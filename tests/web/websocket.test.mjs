// The WebSocket at /ws accepts the page's own origin only: another site's page, which the
// browser would send with the person's cookie, is refused before any message is exchanged.

import test, { afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';

import {
  TEST_TIMEOUT,
  finish,
  signedInPages,
  request,
  sessionCookie,
  startServer,
} from './harness.mjs';

afterEach(finish);

/** A WebSocket opening handshake from `origin`, with the session cookie, as a raw request. */
function upgrade(server, origin, cookie) {
  const key = randomBytes(16).toString('base64');
  const headers = {
    connection: 'Upgrade',
    upgrade: 'websocket',
    'sec-websocket-key': key,
    'sec-websocket-version': '13',
    cookie,
  };
  if (origin !== undefined) headers.origin = origin;
  return request(server, '/ws', { headers }).then((response) => ({ ...response, key }));
}

test('the WebSocket refuses another site\'s origin and accepts its own', { timeout: TEST_TIMEOUT }, async () => {
  const server = await startServer();
  const [alice] = await signedInPages(server, ['alice']);
  // The cookie is sent either way: a foreign page's socket would carry it too.
  const cookie = await sessionCookie(alice);

  for (const origin of [
    'http://evil.example',
    `http://evil.example:${server.port}`,
    `http://${server.host}:${server.port === 65535 ? 1 : server.port + 1}`,
    'null',
  ]) {
    const refused = await upgrade(server, origin, cookie);
    assert.equal(refused.status, 403, `Origin: ${origin}`);
  }

  const accepted = await upgrade(server, server.origin, cookie);
  assert.equal(accepted.status, 101);
  // RFC 6455 section 4.2.2: the key, the protocol's GUID, SHA-1, base64.
  const expected = createHash('sha1').update(`${accepted.key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
  assert.equal(accepted.headers['sec-websocket-accept'], expected);
});
