'use strict';
// lib/awsidentity.js: where the signed GetCallerIdentity (which carries the session token) may go.
const assert = require('node:assert/strict');
const path = require('node:path');
const test = require('node:test');

const lib = path.join(__dirname, '..', '..', '..', 'actions', 'credentials', 'lib');
const { stsEndpoint } = require(path.join(lib, 'awsidentity.js'));
const { ActionError } = require(path.join(lib, 'runner.js'));

test("the region's own endpoint, China's under amazonaws.com.cn", () => {
  assert.equal(stsEndpoint('eu-west-1', {}), 'https://sts.eu-west-1.amazonaws.com');
  assert.equal(stsEndpoint('cn-north-1', {}), 'https://sts.cn-north-1.amazonaws.com.cn');
});

test("the SDKs' endpoint variables win, the STS one first", () => {
  const env = { AWS_ENDPOINT_URL: 'https://aws.example.com', AWS_ENDPOINT_URL_STS: 'https://sts.example.com/' };
  assert.equal(stsEndpoint('eu-west-1', env), 'https://sts.example.com');
  assert.equal(stsEndpoint('eu-west-1', { AWS_ENDPOINT_URL: 'https://aws.example.com' }), 'https://aws.example.com');
  assert.equal(stsEndpoint('eu-west-1', { AWS_ENDPOINT_URL_STS: 'http://127.0.0.1:5000' }), 'http://127.0.0.1:5000');
});

test('plain http off this machine, user information and odd regions are refused', () => {
  for (const url of ['http://sts.example.com', 'http://localhost.evil.example.com', 'http://127.0.0.1:80@evil.example.com', 'https://a@evil.example.com', 'ftp://127.0.0.1']) {
    assert.throws(() => stsEndpoint('eu-west-1', { AWS_ENDPOINT_URL_STS: url }), ActionError, url);
  }
  assert.throws(() => stsEndpoint('eu-west-1.evil.example.com/x#', {}), ActionError);
});
