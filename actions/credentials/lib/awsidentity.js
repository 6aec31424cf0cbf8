'use strict';
// Which AWS account the credentials belong to, asked of AWS itself: sts:GetCallerIdentity (which
// needs no permission), signed with Signature Version 4, as configure-aws-credentials does for
// its aws-account-id output. The answer, not the broker's config, decides the allowed-account-ids
// guard. The endpoint is the one the SDKs would use: AWS_ENDPOINT_URL_STS, else AWS_ENDPOINT_URL,
// else the region's own (sts.REGION.amazonaws.com, .amazonaws.com.cn in China).

const crypto = require('crypto');

const broker = require('./broker');
const retry = require('./retry');
const { ActionError, clean } = require('./runner');

const BODY = 'Action=GetCallerIdentity&Version=2011-06-15';
const CONTENT_TYPE = 'application/x-www-form-urlencoded; charset=utf-8';
const ATTEMPTS = 3;
const TIMEOUT_MS = 15000;

const sha256 = (text) => crypto.createHash('sha256').update(text, 'utf8').digest('hex');
const hmac = (key, text) => crypto.createHmac('sha256', key).update(text, 'utf8').digest();

// The signed request carries the session token: https only, plain http to this machine alone.
const LOOPBACK_HTTP = /^http:\/\/(?:localhost|\[::1\]|127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})(?::[0-9]{1,5})?(?:\/|$)/;

function stsEndpoint(region, env = process.env) {
  const configured = env.AWS_ENDPOINT_URL_STS || env.AWS_ENDPOINT_URL;
  if (configured) {
    if (!/^https:\/\/[^@\s]+$/.test(configured) && !LOOPBACK_HTTP.test(configured)) {
      throw new ActionError(`the STS endpoint ${clean(configured)} must use https:// (http:// only for loopback addresses)`);
    }
    return configured.replace(/\/+$/, '');
  }
  if (!/^[a-z0-9-]+$/.test(region)) throw new ActionError(`'${clean(region)}' is not an AWS region`);
  const suffix = region.startsWith('cn-') ? 'amazonaws.com.cn' : 'amazonaws.com';
  return `https://sts.${region}.${suffix}`;
}

// The headers of a SigV4-signed GetCallerIdentity POST to `url` at time `now` (a Date).
function signedHeaders(url, region, credentials, now) {
  const target = new URL(url);
  const amzDate = now.toISOString().replace(/[-:]/g, '').replace(/\.[0-9]{3}/, '');
  const day = amzDate.slice(0, 8);
  const headers = {
    'content-type': CONTENT_TYPE,
    host: target.host,
    'x-amz-date': amzDate,
    'x-amz-security-token': credentials.session_token,
  };
  const names = Object.keys(headers).sort();
  const canonical = [
    'POST',
    target.pathname || '/',
    '',
    ...names.map((name) => `${name}:${headers[name]}`),
    '',
    names.join(';'),
    sha256(BODY),
  ].join('\n');
  const scope = `${day}/${region}/sts/aws4_request`;
  const toSign = ['AWS4-HMAC-SHA256', amzDate, scope, sha256(canonical)].join('\n');
  let key = hmac(`AWS4${credentials.secret_access_key}`, day);
  for (const part of [region, 'sts', 'aws4_request']) key = hmac(key, part);
  const signature = crypto.createHmac('sha256', key).update(toSign, 'utf8').digest('hex');
  return {
    'Content-Type': CONTENT_TYPE,
    'X-Amz-Date': amzDate,
    'X-Amz-Security-Token': credentials.session_token,
    Authorization: `AWS4-HMAC-SHA256 Credential=${credentials.access_key_id}/${scope}, SignedHeaders=${names.join(';')}, Signature=${signature}`,
  };
}

function only(xml, tag, pattern) {
  const found = [...xml.matchAll(new RegExp(`<${tag}>([^<]*)</${tag}>`, 'g'))].map((m) => m[1]);
  return found.length === 1 && pattern.test(found[0]) ? found[0] : null;
}

// {account, arn} of these credentials; an ActionError saying why when AWS cannot tell.
async function callerIdentity(credentials, region, env = process.env) {
  const url = `${stsEndpoint(region, env)}/`;
  let why = '';
  for (let attempt = 1; attempt <= ATTEMPTS; attempt += 1) {
    if (attempt > 1) await retry.sleep(retry.backoffMs(attempt - 1));
    let response;
    try {
      response = await broker.send('POST', url, signedHeaders(url, region, credentials, new Date()), BODY, TIMEOUT_MS);
    } catch (error) {
      if (!(error instanceof broker.NoAnswer)) throw error;
      why = `${clean(url)} did not answer (${error.message})`;
      continue;
    }
    if (response.status === 200) {
      const account = only(response.text, 'Account', /^[0-9]{12}$/);
      const arn = only(response.text, 'Arn', /^arn:[a-z-]+:(?:sts|iam)::[0-9]{12}:[\x21-\x7e]+$/);
      if (!account || !arn) throw new ActionError(`sts:GetCallerIdentity at ${clean(url)} gave no account and ARN`);
      return { account, arn };
    }
    const code = only(response.text, 'Code', /^[A-Za-z.]{1,64}$/);
    why = `sts:GetCallerIdentity at ${clean(url)} answered HTTP ${response.status}${code ? ` ${code}` : ''}`;
    if (response.status < 500 && response.status !== 429) break;
  }
  throw new ActionError(why);
}

module.exports = { stsEndpoint, signedHeaders, callerIdentity };
