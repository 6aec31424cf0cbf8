'use strict';
// The Action's main step: exchange this job's GitHub OIDC token at the broker, mask every secret,
// export what the cloud's tools read (or, with `refresh: true`, hooks they call when they need
// fresh credentials) and set the outputs. No dependencies: Node's own fetch and the runner's
// workflow commands and environment files, so it runs unchanged on Linux, macOS and Windows.

const path = require('path');

const awsIdentity = require('./lib/awsidentity');
const awsProfiles = require('./lib/awsprofiles');
const broker = require('./lib/broker');
const claims = require('./lib/claims');
const retry = require('./lib/retry');
const runner = require('./lib/runner');
const session = require('./lib/session');

const { ActionError, say } = runner;
const ROLE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const CLAIMS_GROUP = "ci-broker: this job's claims (what the broker's policy sees)";

function flag(name, fallback) {
  const value = (runner.input(name) || fallback).toLowerCase();
  if (value !== 'true' && value !== 'false') throw new ActionError(`${name} takes true or false`);
  return value === 'true';
}

// The broker's base URL: https, or plain http to this machine only (as the broker's own config
// rule), and never with user information (`http://localhost:80@host` names `host`).
function brokerUrl(raw) {
  if (!raw) throw new ActionError('broker-url is not set: give the broker\'s base URL, e.g. https://broker.example.com');
  if (!/^[\x21-\x7e]+$/.test(raw) || /["\\]/.test(raw)) {
    throw new ActionError('broker-url must be a single word of printable ASCII, without quotes or backslashes');
  }
  const url = raw.replace(/\/$/, '');
  const hostport = url.replace(/^[a-z]+:\/\//, '').split(/[/?#]/)[0];
  if (hostport.includes('@')) throw new ActionError('broker-url must not contain user information (an @ before the host)');
  if (url.startsWith('https://')) return url;
  if (!url.startsWith('http://')) throw new ActionError('broker-url must start with https://');
  const loopback = /^(?:localhost|\[::1\]|127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})(?::[0-9]{1,5})?$/;
  if (!loopback.test(hostport)) throw new ActionError('broker-url must use https:// (http:// is only for loopback addresses)');
  return url;
}

function settings() {
  const url = brokerUrl(runner.input('broker-url'));
  const role = runner.input('role');
  if (!ROLE.test(role)) throw new ActionError("role must be a role name: 1-64 letters, digits, '.', '_' or '-'");
  const audience = runner.input('audience') || runner.input('broker-url');
  if (!/^[\x21-\x7e]+$/.test(audience)) throw new ActionError('audience must be a single word of printable ASCII');
  const durationText = runner.input('duration');
  if (durationText && !/^[1-9][0-9]{0,5}$/.test(durationText)) throw new ActionError('duration must be a whole number of seconds');
  const attempts = Number(process.env.CI_BROKER_MAX_ATTEMPTS || '5');
  if (!Number.isInteger(attempts) || attempts < 1 || attempts > 19) throw new ActionError('CI_BROKER_MAX_ATTEMPTS must be 1 to 19');
  const profile = runner.input('aws-profile');
  const result = {
    url,
    role,
    audience,
    duration: durationText ? Number(durationText) : null,
    exportEnv: flag('export-env', 'true'),
    outputCredentials: flag('output-credentials', 'false'),
    refresh: flag('refresh', 'false'),
    awsProfile: profile ? awsProfiles.checkName(profile) : '',
    allowedAccounts: accountIds(runner.input('allowed-account-ids')),
    attempts,
  };
  if (result.refresh && !result.exportEnv) throw new ActionError('refresh works through the exported environment: keep export-env true');
  if (result.awsProfile && !result.exportEnv) throw new ActionError('aws-profile works through the exported environment: keep export-env true');
  return result;
}

// allowed-account-ids: AWS account ids separated by commas (as configure-aws-credentials takes them).
function accountIds(text) {
  if (!text) return null;
  const ids = text.split(',').map((id) => id.trim());
  if (!ids.every((id) => /^[0-9]{12}$/.test(id))) {
    throw new ActionError('allowed-account-ids must be 12-digit AWS account ids separated by commas');
  }
  return ids;
}

async function jobToken(audience) {
  const requestUrl = process.env.ACTIONS_ID_TOKEN_REQUEST_URL;
  const requestToken = process.env.ACTIONS_ID_TOKEN_REQUEST_TOKEN;
  if (!requestUrl || !requestToken) {
    throw new ActionError(
      'this job cannot request an OIDC token: it lacks the id-token permission.',
      "Fix: add 'permissions: { id-token: write, contents: read }' to the workflow or to this job.",
      '(Pull requests from forks never get one.)',
    );
  }
  const url = `${requestUrl}${requestUrl.includes('?') ? '&' : '?'}audience=${encodeURIComponent(audience)}`;
  const response = await broker.request('GET', url, `bearer ${requestToken}`);
  if (response.status !== 200) throw new ActionError(`GitHub refused the OIDC token request with HTTP ${response.status}.`);
  let token = '';
  try {
    token = JSON.parse(response.text).value;
  } catch {
    token = '';
  }
  if (typeof token !== 'string' || !/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(token)) {
    throw new ActionError("GitHub's OIDC token answer has no token in it.");
  }
  runner.mask(token);
  return token;
}

function refused(response, s) {
  const detail = broker.detail(response);
  switch (Math.floor(response.status / 100) === 4 ? response.status : response.status === 502 ? 502 : 0) {
    case 401:
      return new ActionError(
        `the broker refused this job's token: ${detail}`,
        "Check that audience matches the broker's server.audience and that the broker trusts this CI's issuer.",
      );
    case 403:
      return new ActionError(
        `the broker denied role '${s.role}': ${detail}`,
        'No rule of the role grants this job (or the role does not exist). The log group',
        `"${CLAIMS_GROUP}" above shows the claims the policy saw. To see which condition failed,`,
        `the broker's operator can run: ci-broker explain --config CONFIG --role ${s.role} --claims CLAIMS.json`,
        "with this job's claims, which the broker's audit log holds under the request id above.",
      );
    case 502:
      return new ActionError(`the cloud refused or failed the exchange: ${detail}`);
    case 0:
      return new ActionError(`unexpected answer from ${s.url}/v1/exchange: ${detail}`, "Is broker-url the broker's base URL?");
    default:
      return new ActionError(`the broker rejected the request: ${detail}`);
  }
}

// One exchange with bounded retries (lib/retry.js: exponential backoff with jitter, or longer when
// the broker's Retry-After says so) while the broker is unreachable, unavailable or rate-limiting. Each attempt gets a fresh OIDC token: a
// request that timed out may still have spent the previous one, and the broker refuses a token it
// has seen. Before a token goes anywhere, the claims are shown and its audience must name the URL
// it goes to (lib/claims.js).
async function exchange(s) {
  const body = s.duration ? { role: s.role, duration: s.duration } : { role: s.role };
  let shown = false;
  for (let attempt = 1; ; attempt += 1) {
    let why;
    let retryAfter = 0;
    let token = null;
    try {
      token = await jobToken(s.audience);
    } catch (error) {
      if (!(error instanceof broker.NoAnswer)) throw error;
      why = "GitHub's OIDC token endpoint did not answer";
    }
    if (token !== null) {
      const jobClaims = claims.payload(token);
      if (!shown) runner.group(CLAIMS_GROUP, claims.shownLines(jobClaims));
      shown = true;
      claims.requireAudienceNames(jobClaims, s.url);
      try {
        const response = await broker.request('POST', `${s.url}/v1/exchange`, `Bearer ${token}`, body);
        if (response.status === 200) return response;
        if (response.status !== 429 && response.status !== 503) throw refused(response, s);
        why = `the broker answered ${broker.detail(response)}`;
        retryAfter = response.retryAfter;
      } catch (error) {
        if (!(error instanceof broker.NoAnswer)) throw error;
        why = `the broker at ${s.url} did not answer`;
      }
    }
    if (attempt >= s.attempts) throw new ActionError(`${why}; gave up after ${attempt} attempts.`);
    const wait = retry.afterAnswer(attempt, retryAfter);
    say(`${why}; trying again in ${retry.seconds(wait)} (attempt ${attempt} of ${s.attempts})`);
    await retry.sleep(wait);
  }
}

// The AWS account the credentials are for, from sts:GetCallerIdentity, and the allowed-account-ids
// guard. Without the guard a failed look-up only warns: the credentials work all the same.
async function awsAccount(s, answer) {
  const region = answer.credentials.region || process.env.AWS_REGION || process.env.AWS_DEFAULT_REGION || 'us-east-1';
  let identity;
  try {
    identity = await awsIdentity.callerIdentity(answer.credentials, region);
  } catch (error) {
    if (!(error instanceof ActionError)) throw error;
    if (s.allowedAccounts) throw new ActionError(`cannot check allowed-account-ids: ${error.message}; nothing was exported.`);
    runner.annotate('warning', `could not look up the AWS account of role '${s.role}' (${error.message}); aws-account-id is not set`);
    return null;
  }
  if (s.allowedAccounts && !s.allowedAccounts.includes(identity.account)) {
    throw new ActionError(
      `role '${s.role}' gave credentials for AWS account ${identity.account}, which allowed-account-ids does not list; nothing was exported.`,
      "Check the broker role's role_arn with the broker's operator, or the account list in this workflow.",
    );
  }
  return identity;
}

// Guards that can only be checked on the answer; a session that will not be used is ended.
async function checked(s, answer) {
  try {
    if (s.allowedAccounts && answer.cloud !== 'aws') {
      throw new ActionError(`allowed-account-ids applies to AWS roles; role '${s.role}' is ${answer.cloud}; nothing was exported.`);
    }
    if (s.awsProfile && answer.cloud !== 'aws') {
      throw new ActionError(`aws-profile applies to AWS roles; role '${s.role}' is ${answer.cloud}; nothing was exported.`);
    }
    return answer.cloud === 'aws' ? await awsAccount(s, answer) : null;
  } catch (error) {
    if (answer.session) await session.revokeToken(s.url, answer.session.refreshToken).catch(() => {});
    throw error;
  }
}

// What the following steps get: the cloud's usual variables, or with refresh the hooks instead of
// the static secrets (a static token would outlive its use and win over the hook).
function environment(answer, hooks, profileEnv) {
  const c = answer.credentials;
  const env = [];
  if (profileEnv) {
    env.push(...profileEnv);
  } else if (answer.cloud === 'aws') {
    if (!hooks) env.push(['AWS_ACCESS_KEY_ID', c.access_key_id], ['AWS_SECRET_ACCESS_KEY', c.secret_access_key], ['AWS_SESSION_TOKEN', c.session_token]);
    env.push(['AWS_REGION', c.region], ['AWS_DEFAULT_REGION', c.region]);
  } else if (answer.cloud === 'gcp') {
    if (!hooks) env.push(['CLOUDSDK_AUTH_ACCESS_TOKEN', c.access_token], ['GOOGLE_OAUTH_ACCESS_TOKEN', c.access_token]);
  } else {
    for (const prefix of ['ARM', 'AZURE']) {
      env.push([`${prefix}_TENANT_ID`, c.tenant_id], [`${prefix}_CLIENT_ID`, c.client_id], [`${prefix}_SUBSCRIPTION_ID`, c.subscription_id]);
    }
    if (!hooks) env.push(['AZURE_ACCESS_TOKEN', c.access_token]);
    env.push(['AZURE_AUTHORITY_HOST', c.authority_host]);
    if (!hooks && c.federated_token) {
      const file = path.join(runnerTemp(), 'ci-broker-azure-federated-token');
      session.writeTokenFile(file, c.federated_token);
      runner.saveState('federated_token_file', file);
      env.push(['AZURE_FEDERATED_TOKEN_FILE', file], ['ARM_OIDC_TOKEN_FILE_PATH', file], ['ARM_USE_OIDC', 'true']);
    }
  }
  if (!profileEnv) env.push(...(hooks || []));
  env.push(['CI_BROKER_CLOUD', answer.cloud], ['CI_BROKER_EXPIRES_AT', answer.expiresAt]);
  if (hooks) env.push(['CI_BROKER_SESSION_EXPIRES_AT', answer.session.expiresAt]);
  return env.filter(([, value]) => value);
}

function runnerTemp() {
  const temp = process.env.RUNNER_TEMP;
  if (!temp) throw new ActionError('RUNNER_TEMP is not set');
  return temp;
}

// Credential outputs with output-credentials: each field under its dashed name, and the AWS keys
// also under configure-aws-credentials' names, so its users' later steps read them unchanged.
const OUTPUTS = [
  ['access-key-id', 'access_key_id'],
  ['secret-access-key', 'secret_access_key'],
  ['session-token', 'session_token'],
  ['region', 'region'],
  ['access-token', 'access_token'],
  ['token-type', 'token_type'],
  ['service-account', 'service_account'],
  ['tenant-id', 'tenant_id'],
  ['client-id', 'client_id'],
  ['subscription-id', 'subscription_id'],
  ['federated-token', 'federated_token'],
  ['authority-host', 'authority_host'],
  ['aws-access-key-id', 'access_key_id'],
  ['aws-secret-access-key', 'secret_access_key'],
  ['aws-session-token', 'session_token'],
];

async function run() {
  const s = settings();
  if (s.awsProfile) awsProfiles.requireFree(runnerTemp(), s.awsProfile, s.role);
  say(`exchanging this job's OIDC token at ${s.url} for role '${s.role}'`);
  const response = await exchange(s);
  const answer = broker.readAnswer(response.text);
  for (const secret of answer.secrets) runner.mask(secret);
  const identity = await checked(s, answer);

  let hooks = null;
  let made = null;
  if (s.refresh) {
    if (!answer.session) {
      throw new ActionError(
        `role '${s.role}' gives no session, so its credentials cannot be refreshed.`,
        "Ask the broker's operator to set session_lifetime on the role, or drop 'refresh: true'.",
      );
    }
    const script = path.join(__dirname, 'session.js');
    made = session.setUp({ base: runnerTemp(), url: s.url, duration: s.duration, answerText: response.text, answer, script, awsProfile: s.awsProfile });
    runner.saveState('session_dir', made.dir);
    hooks = made.env;
  } else if (answer.session) {
    // Nobody will refresh it: end it now rather than leave a live session behind.
    await session.revokeToken(s.url, answer.session.refreshToken).catch(() => {});
  }
  let profileEnv = null;
  if (s.awsProfile) {
    const profile = awsProfiles.addProfile(runnerTemp(), s.awsProfile, {
      role: s.role,
      credentials: made ? null : answer.credentials,
      credentialProcess: made ? made.credentialProcess : null,
      region: answer.credentials.region,
    });
    runner.saveState('aws_profile_dir', profile.dir);
    profileEnv = profile.env;
  }

  const exports = s.exportEnv ? environment(answer, hooks, profileEnv) : [];
  const names = exports.map(([name]) => name);
  // The post step clears them, so the post steps of other actions do not run with them.
  if (names.length) runner.saveState('exported', names.join(' '));
  for (const [name, value] of exports) runner.exportVariable(name, value);
  runner.setOutput('cloud', answer.cloud);
  runner.setOutput('expires-at', answer.expiresAt);
  if (identity) {
    runner.setOutput('aws-account-id', identity.account);
    runner.setOutput('authenticated-arn', identity.arn);
  }
  if (s.outputCredentials) {
    for (const [output, field] of OUTPUTS) {
      if (answer.credentials[field]) runner.setOutput(output, answer.credentials[field]);
    }
    if (answer.cloud === 'aws') runner.setOutput('aws-expiration', answer.expiresAt);
  }
  const account = identity ? ` in AWS account ${identity.account}` : '';
  const profile = s.awsProfile ? ` as AWS profile '${s.awsProfile}'` : '';
  const refreshed = hooks ? `; refreshed on demand until ${answer.session.expiresAt}` : '';
  say(`credentials for role '${s.role}' (${answer.cloud}${account})${profile} expire at ${answer.expiresAt}${refreshed}${names.length ? `; exported: ${names.join(' ')}` : ''}`);
}

run().catch(runner.fail);
