'use strict';
// What the Action reads from the job's own OIDC token before it sends it anywhere. The token comes
// straight from GitHub's token endpoint over TLS, so its payload is read without verifying the
// signature: the broker verifies it; here it only decides where the token may go and what the log
// shows.
//
// Where it may go: only to the broker its audience names. A token minted for the broker at
// https://broker.example.com is a valid, unspent credential there; if broker-url is changed (a
// repository variable, a workflow_dispatch input, an edited `with:`) while `audience` stays the
// real broker's, sending it would hand that credential to whoever runs the other URL. So the URL
// about to be called must have the origin (scheme, host, port; RFC 6454) of an audience of the
// token that is an https:// URL (or http:// to a loopback address), compared as the WHATWG URL
// parser normalises them (host in lower case, default port dropped). The path does not count: one
// origin is one server and one operator, the unit TLS and the browser's security model protect.
// The shell client applies the same rule on GitLab and elsewhere.
// The broker's audience is server.audience, which defaults to server.issuer, the broker's own URL;
// a broker reached under another URL sets that URL as the audience of its github provider.

const json = require('./json');
const { ActionError, clean } = require('./runner');

// The claims GitHub puts in a job's token that policies match on, in the order a reader wants
// them (docs: "About security hardening with OpenID Connect"). None is secret; the token is.
const SHOWN = [
  'iss',
  'aud',
  'sub',
  'repository',
  'repository_id',
  'repository_owner',
  'repository_owner_id',
  'repository_visibility',
  'enterprise',
  'enterprise_id',
  'ref',
  'ref_type',
  'ref_protected',
  'head_ref',
  'base_ref',
  'environment',
  'event_name',
  'workflow',
  'workflow_ref',
  'job_workflow_ref',
  'sha',
  'actor',
  'actor_id',
  'runner_environment',
  'run_id',
  'run_attempt',
];

function payload(token) {
  const part = String(token).split('.')[1] || '';
  let doc;
  try {
    doc = json.parse(Buffer.from(part, 'base64url').toString('utf8'));
  } catch {
    doc = null;
  }
  if (!doc || typeof doc !== 'object' || Array.isArray(doc)) {
    throw new ActionError("the job's OIDC token has no readable claims; nothing was sent to the broker");
  }
  return doc;
}

function parseHttpUrl(text) {
  if (typeof text !== 'string') return null;
  let url;
  try {
    url = new URL(text);
  } catch {
    return null;
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return null;
  if (url.username || url.password || url.search || url.hash || text.includes('?') || text.includes('#')) return null;
  return url;
}

// Refuses (before any request to the broker) unless `brokerUrl` has the origin of an audience of
// the token (GitHub's tokens carry one; a list is read as any of its entries).
function requireAudienceNames(claims, brokerUrl) {
  const audiences = (Array.isArray(claims.aud) ? claims.aud : [claims.aud]).filter((aud) => typeof aud === 'string');
  if (!audiences.length) {
    throw new ActionError(
      "refusing to send this job's OIDC token: it names no audience.",
      'The Action sends the token only to the broker its audience names.',
    );
  }
  const shown = clean(audiences.join(' '));
  const named = audiences.map(parseHttpUrl).filter(Boolean);
  if (!named.length) {
    throw new ActionError(
      `refusing to send this job's OIDC token to ${clean(brokerUrl)}: its audience '${shown}' is not a URL.`,
      'The Action sends the token only to the broker its audience names: set audience to the',
      "broker's URL (its server.audience, by default its issuer URL), or leave audience empty.",
    );
  }
  const target = parseHttpUrl(brokerUrl);
  if (!target || !named.some((url) => url.origin === target.origin)) {
    throw new ActionError(
      `refusing to send this job's OIDC token to ${clean(brokerUrl)}: the token is for ${shown}.`,
      'A token for one broker is a credential there; the Action sends it only to the URL its audience names.',
      'If this is the right broker, set audience to its URL (or leave it empty); if broker-url comes from a',
      'variable or input, check who can change it.',
    );
  }
}

// Lines for the log group: each shown claim the token has, as `name: value` on one line.
function shownLines(claims) {
  const lines = [];
  for (const name of SHOWN) {
    const value = claims[name];
    if (value === undefined || value === null || typeof value === 'object') continue;
    lines.push(`${name}: ${clean(value)}`);
  }
  return lines;
}

module.exports = { SHOWN, payload, requireAudienceNames, shownLines };
