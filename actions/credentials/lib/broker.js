'use strict';
// The broker's HTTP API as the Action speaks it (contract sections 4 and 8): requests with Node's own
// fetch (no redirects: a redirect would carry the bearer token wherever the server points), and
// the broker's answers read strictly, each value checked before anything uses it.

const json = require('./json');
const { ActionError, clean } = require('./runner');

const MAX_ANSWER_BYTES = 1024 * 1024;
const PRINTABLE = /^[\x21-\x7e]+$/;
const TIME = /^[0-9TZ:.+-]+$/;
const REQUIRED = true;
const OPTIONAL = false;
const SECRET = true;
const PLAIN = false;
// Each cloud's credential fields: [name, required, secret]. Anything else in the answer is ignored.
const FIELDS = {
  aws: [
    ['access_key_id', REQUIRED, SECRET],
    ['secret_access_key', REQUIRED, SECRET],
    ['session_token', REQUIRED, SECRET],
    ['region', OPTIONAL, PLAIN],
  ],
  gcp: [
    ['access_token', REQUIRED, SECRET],
    ['token_type', REQUIRED, PLAIN],
    ['service_account', OPTIONAL, PLAIN],
    ['federated_token', OPTIONAL, SECRET],
    ['audience', OPTIONAL, PLAIN],
    ['token_url', OPTIONAL, PLAIN],
    ['service_account_impersonation_url', OPTIONAL, PLAIN],
  ],
  azure: [
    ['access_token', REQUIRED, SECRET],
    ['token_type', REQUIRED, PLAIN],
    ['tenant_id', REQUIRED, PLAIN],
    ['client_id', REQUIRED, PLAIN],
    ['subscription_id', OPTIONAL, PLAIN],
    ['federated_token', OPTIONAL, SECRET],
    ['authority_host', OPTIONAL, PLAIN],
  ],
};

// No HTTP answer at all (refused, timed out, TLS failure): the request may be tried again.
class NoAnswer extends Error {}

// One HTTP request and its whole answer (at most 1 MiB read); NoAnswer when none came. Redirects
// are not followed: a redirect would carry the credential in `headers` wherever the server points.
async function send(method, url, headers, body, timeoutMs = 60000) {
  let response;
  try {
    response = await fetch(url, { method, headers, body, redirect: 'manual', signal: AbortSignal.timeout(timeoutMs) });
  } catch (error) {
    const cause = error && error.cause ? error.cause.code || error.cause.message : '';
    throw new NoAnswer(clean(`${error.name}${cause ? `: ${cause}` : ''}`));
  }
  let text = '';
  try {
    const data = Buffer.from(await response.arrayBuffer());
    text = data.length <= MAX_ANSWER_BYTES ? data.toString('utf8') : '';
  } catch (error) {
    throw new NoAnswer(clean(`${error.name} while reading the answer`));
  }
  const retryAfter = /^[0-9]{1,5}$/.test(response.headers.get('retry-after') || '') ? Number(response.headers.get('retry-after')) : 0;
  return { status: response.status, text, requestId: response.headers.get('x-request-id') || '', retryAfter };
}

async function request(method, url, authorization, body, timeoutMs = 60000) {
  const headers = { Authorization: authorization, Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  return send(method, url, headers, body === undefined ? undefined : JSON.stringify(body), timeoutMs);
}

// The broker's error answer, reduced to what may be shown: status, error code, message, request id.
function detail(response) {
  let doc = {};
  try {
    doc = json.parse(response.text);
  } catch {
    doc = {};
  }
  const text = (key) => (doc && typeof doc[key] === 'string' ? clean(doc[key]) : '');
  const error = text('error');
  const message = text('message');
  const requestId = text('request_id') || clean(response.requestId);
  return `HTTP ${response.status}${error ? ` ${error}` : ''}${message ? `: ${message}` : ''}${requestId ? ` (request id ${requestId})` : ''}`;
}

function refuse(what) {
  return new ActionError(`the broker's answer ${what}`);
}

// A granted answer (exchange or refresh), checked whole: {cloud, role, expiresAt, credentials,
// secrets, session}. `secrets` lists every value that must be masked.
function readAnswer(text) {
  let doc;
  try {
    doc = json.parse(text);
  } catch {
    throw refuse('is not valid JSON');
  }
  if (!doc || typeof doc !== 'object' || Array.isArray(doc)) throw refuse('is not valid JSON');
  const fields = FIELDS[doc.cloud];
  if (typeof doc.cloud !== 'string' || !fields) throw refuse('names no known cloud');
  const given = doc.credentials && typeof doc.credentials === 'object' ? doc.credentials : {};
  const credentials = {};
  const secrets = [];
  for (const [name, required, secret] of fields) {
    const value = given[name];
    if (value === undefined && !required) continue;
    if (typeof value !== 'string' || !PRINTABLE.test(value)) throw refuse(`has no usable credentials.${name}`);
    credentials[name] = value;
    if (secret) secrets.push(value);
  }
  if (typeof doc.expires_at !== 'string' || !TIME.test(doc.expires_at)) throw refuse('has no usable expires_at');
  let session = null;
  if (doc.session !== undefined) {
    const s = doc.session;
    const ok =
      s && typeof s === 'object' &&
      typeof s.id === 'string' && /^[A-Za-z0-9._-]{1,128}$/.test(s.id) &&
      typeof s.refresh_token === 'string' && /^[A-Za-z0-9._~+/=-]{16,512}$/.test(s.refresh_token) &&
      typeof s.expires_at === 'string' && TIME.test(s.expires_at);
    if (!ok) throw refuse('has no usable session');
    session = { id: s.id, refreshToken: s.refresh_token, expiresAt: s.expires_at };
    secrets.push(session.refreshToken);
  }
  const role = typeof doc.role === 'string' ? clean(doc.role) : '';
  return { cloud: doc.cloud, role, expiresAt: doc.expires_at, credentials, secrets, session };
}

module.exports = { FIELDS, NoAnswer, send, request, detail, readAnswer };
