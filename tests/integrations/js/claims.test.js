'use strict';
// lib/claims.js: which broker URL a job token's audience names, and what the log shows.
const assert = require('node:assert/strict');
const path = require('node:path');
const test = require('node:test');

const lib = path.join(__dirname, '..', '..', '..', 'actions', 'credentials', 'lib');
const claims = require(path.join(lib, 'claims.js'));
const { ActionError } = require(path.join(lib, 'runner.js'));

const token = (payload) =>
  `${Buffer.from('{"alg":"RS256"}').toString('base64url')}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.c2ln`;

const named = (aud, url) => claims.requireAudienceNames({ aud }, url);

test('a URL with the origin the audience names is accepted, spelled either way', () => {
  for (const [aud, url] of [
    ['https://broker.example.com', 'https://broker.example.com'],
    ['https://broker.example.com/', 'https://broker.example.com'],
    ['https://broker.example.com', 'https://broker.example.com/'],
    ['https://Broker.Example.COM', 'https://broker.example.com'],
    ['https://broker.example.com:443', 'https://broker.example.com'],
    ['https://example.com/ci-broker', 'https://example.com/ci-broker/'],
    ['https://example.com', 'https://example.com/ci-broker'],
    ['http://127.0.0.1:8080', 'http://127.0.0.1:8080'],
    [['https://broker.example.com'], 'https://broker.example.com'],
    [['ci-broker', 'https://broker.example.com'], 'https://broker.example.com'],
    [['https://broker.example.com', 'https://broker.internal:8443'], 'https://broker.internal:8443'],
  ]) {
    assert.doesNotThrow(() => named(aud, url), `${aud} should name ${url}`);
  }
});

test('any other URL is refused', () => {
  for (const [aud, url] of [
    ['https://broker.example.com', 'https://evil.example.com'],
    ['https://broker.example.com', 'https://broker.example.com.evil.example.com'],
    ['https://broker.example.com', 'https://broker.example.com:8443'],
    ['https://broker.example.com', 'http://broker.example.com'],
    ['http://127.0.0.1:8080', 'http://127.0.0.1:8081'],
    ['http://127.0.0.1:8080', 'http://localhost:8080'],
    ['https://broker.example.com', 'https://evil.example.com/https://broker.example.com'],
    [['https://a.example.com', 'https://b.example.com'], 'https://c.example.com'],
  ]) {
    assert.throws(() => named(aud, url), ActionError, `${aud} must not name ${url}`);
  }
});

test('an audience that names no http(s) URL names no broker', () => {
  for (const aud of [
    'ci-broker',
    'sts.amazonaws.com',
    'api://AzureADTokenExchange',
    'ftp://broker.example.com',
    'https://user@broker.example.com',
    'https://broker.example.com?x=1',
    'https://broker.example.com#x',
    'https://broker.example.com/?',
    '',
    ['ci-broker', 'api://AzureADTokenExchange'],
    [],
    42,
    null,
    undefined,
  ]) {
    assert.throws(() => named(aud, 'https://broker.example.com'), ActionError, JSON.stringify(aud));
  }
});

test('the refusal names both URLs and what to do', () => {
  assert.throws(
    () => named('https://broker.example.com', 'https://evil.example.com'),
    (error) =>
      error.message.includes("refusing to send this job's OIDC token to https://evil.example.com") &&
      error.message.includes('the token is for https://broker.example.com') &&
      error.lines.some((line) => line.includes('set audience to its URL')),
  );
});

test("the token's payload is read strictly", () => {
  assert.deepEqual({ ...claims.payload(token({ aud: 'a', ref: 'r' })) }, { aud: 'a', ref: 'r' });
  for (const bad of ['', 'a.b.c', 'x.' + Buffer.from('[1]').toString('base64url') + '.y', 'x.' + Buffer.from('{"aud":"a","aud":"b"}').toString('base64url') + '.y']) {
    assert.throws(() => claims.payload(bad), ActionError, bad);
  }
});

test('the log shows the claims policies use, in a fixed order, and nothing else', () => {
  const lines = claims.shownLines({
    jti: 'secret-ish-id',
    ref: 'refs/heads/main',
    repository: 'octo-org/app',
    repository_id: '892734123',
    ref_protected: true,
    run_attempt: 1,
    environment: 'production',
    event_name: 'push',
    workflow_ref: 'octo-org/app/.github/workflows/deploy.yml@refs/heads/main',
    job_workflow_ref: 'octo-org/deploy/.github/workflows/deploy.yml@refs/heads/main',
    custom_claim: 'x',
    nested: { a: 1 },
    aud: 'https://broker.example.com',
  });
  assert.deepEqual(lines, [
    'aud: https://broker.example.com',
    'repository: octo-org/app',
    'repository_id: 892734123',
    'ref: refs/heads/main',
    'ref_protected: true',
    'environment: production',
    'event_name: push',
    'workflow_ref: octo-org/app/.github/workflows/deploy.yml@refs/heads/main',
    'job_workflow_ref: octo-org/deploy/.github/workflows/deploy.yml@refs/heads/main',
    'run_attempt: 1',
  ]);
});

test('a claim value cannot break the line it is on', () => {
  const [line] = claims.shownLines({ ref: 'refs/heads/x\n::add-mask::y\r\u2028z' });
  assert.equal(line, 'ref: refs/heads/x::add-mask::y?z');
});
