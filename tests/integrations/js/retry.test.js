'use strict';
// lib/retry.js: the backoff schedule, exactly, for chosen random draws.
const assert = require('node:assert/strict');
const path = require('node:path');
const test = require('node:test');

const retry = require(path.join(__dirname, '..', '..', '..', 'actions', 'credentials', 'lib', 'retry.js'));

const always = (value) => () => value;

test('the lowest draw waits half the ceiling, which doubles from 1 s', () => {
  assert.deepEqual([1, 2, 3, 4, 5].map((n) => retry.backoffMs(n, always(0))), [500, 1000, 2000, 4000, 8000]);
});

test('the highest draw waits (nearly) the whole ceiling', () => {
  assert.deepEqual([1, 2, 3, 4].map((n) => retry.backoffMs(n, always(0.999999))), [1000, 2000, 4000, 8000]);
});

test('a draw in between lands in between, linearly', () => {
  assert.equal(retry.backoffMs(3, always(0.5)), 3000);
  assert.equal(retry.backoffMs(1, always(0.25)), 625);
});

test('the ceiling stops at 20 s however many attempts', () => {
  assert.equal(retry.backoffMs(6, always(0)), 10000);
  assert.equal(retry.backoffMs(19, always(0.999999)), 20000);
  assert.equal(retry.backoffMs(1000, always(0)), 10000);
});

test('each wait draws once from the random source', () => {
  const draws = [0.1, 0.9, 0.4];
  let calls = 0;
  const source = () => draws[calls++];
  assert.deepEqual([1, 2, 3].map((n) => retry.backoffMs(n, source)), [550, 1900, 2800]);
  assert.equal(calls, 3);
});

test('two jobs failing together do not retry together', () => {
  const a = retry.backoffMs(2, always(0.1));
  const b = retry.backoffMs(2, always(0.7));
  assert.notEqual(a, b);
});

test('nonsense is refused rather than turned into a wait', () => {
  assert.throws(() => retry.backoffMs(0, always(0)), RangeError);
  assert.throws(() => retry.backoffMs(1.5, always(0)), RangeError);
  assert.throws(() => retry.backoffMs(1, always(1)), RangeError);
  assert.throws(() => retry.backoffMs(1, always(-0.1)), RangeError);
  assert.throws(() => retry.backoffMs(1, always(Number.NaN)), RangeError);
});

test('the default source is Math.random, within the bounds', () => {
  for (let i = 0; i < 200; i += 1) {
    const wait = retry.backoffMs(2);
    assert.ok(wait >= 1000 && wait <= 2000, String(wait));
  }
});

test('waits are shown in seconds with one decimal', () => {
  assert.equal(retry.seconds(1375), '1.4s');
  assert.equal(retry.seconds(500), '0.5s');
});

test("a Retry-After longer than the backoff is waited out, up to the cap", () => {
  assert.equal(retry.afterAnswer(1, 3, always(0.5)), 3000);
  assert.equal(retry.afterAnswer(1, 600, always(0.5)), 20000);
});

test('a Retry-After shorter than the backoff (or none) leaves the backoff', () => {
  assert.equal(retry.afterAnswer(3, 1, always(0)), 2000);
  assert.equal(retry.afterAnswer(2, 0, always(0.5)), 1500);
});
