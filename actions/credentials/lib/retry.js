'use strict';
// How long to wait before trying again: exponential backoff with "equal jitter" (half the ceiling
// fixed, half random), the ceiling doubling from 1 s up to 20 s. Many jobs refused at the same
// moment (a broker restarting, a rate limit) then come back spread over time instead of all at
// once, and no retry follows its failure at once. The random source is a parameter so the
// schedule can be tested exactly.

const BASE_MS = 1000;
const CAP_MS = 20000;

// The wait after failed attempt `attempt` (1 for the first), in milliseconds.
function backoffMs(attempt, random = Math.random) {
  if (!Number.isInteger(attempt) || attempt < 1) throw new RangeError('attempt counts from 1');
  const r = random();
  if (typeof r !== 'number' || !(r >= 0 && r < 1)) throw new RangeError('random() must return a number in [0, 1)');
  const ceiling = Math.min(CAP_MS, BASE_MS * 2 ** Math.min(attempt - 1, 30));
  return Math.round(ceiling / 2 + (r * ceiling) / 2);
}

// The wait after a 429 or 503 that says when to come back (Retry-After, in seconds): at least that,
// up to the cap, and never less than the backoff.
function afterAnswer(attempt, retryAfterSeconds, random = Math.random) {
  return Math.max(backoffMs(attempt, random), Math.min(CAP_MS, retryAfterSeconds * 1000));
}

// The wait as the log shows it: "1.4s".
function seconds(ms) {
  return `${(ms / 1000).toFixed(1)}s`;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

module.exports = { BASE_MS, CAP_MS, backoffMs, afterAnswer, seconds, sleep };
