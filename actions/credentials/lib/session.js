'use strict';
// A broker session on the runner (contract section 8, client side). With `refresh: true` the step
// leaves the job a session directory under RUNNER_TEMP (mode 0700, files 0600) holding the broker's
// last answer, and points each cloud's own tools at a hook that refreshes when they ask:
// - AWS: a `credential_process` profile (AWS_CONFIG_FILE + AWS_PROFILE);
// - GCP: an `external_account` configuration whose executable source hands Google's libraries the
//   broker's assertion for the role (GOOGLE_APPLICATION_CREDENTIALS);
// - Azure: AZURE_FEDERATED_TOKEN_FILE, rewritten before the assertion in it expires by a small
//   background process (Azure's tools read the file; nothing else would ask).
// The hooks are this action's own session.js, run by the runner's node. They share one lock, so two
// tools asking at once cause one refresh: a refresh token presented twice ends the session at the
// broker. The post step stops the background process, revokes the session and removes the directory.

const childProcess = require('child_process');
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

const broker = require('./broker');
const retry = require('./retry');
const { ActionError, clean } = require('./runner');

const STATE = 'state.json';
const LOCK = 'lock';
const DAEMON_PID = 'azure-refresher.pid';
const AWS_CONFIG = 'aws-config';
const AWS_PROFILE = 'ci-broker';
const GCP_CONFIG = 'gcp-credentials.json';
const AZURE_TOKEN = 'azure-federated-token';
const JWT_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
// Credentials are handed out again while they have this long left. AWS: botocore's advisory refresh
// window (it asks again below it). The broker's assertions live five minutes.
const AWS_MARGIN_MS = 15 * 60 * 1000;
const ASSERTION_MARGIN_MS = 90 * 1000;
const LOCK_WAIT_MS = 90 * 1000;
const LOCK_STALE_MS = 120 * 1000;
const HOOK_ATTEMPTS = 4;
const HOOK_TIMEOUT_MS = 10 * 1000;
// Paths that go into a command line unquoted: sh, cmd.exe, botocore and shlex read them alike.
const SAFE_PATH = /^[A-Za-z0-9_.:/\\@+-]+$/;
// Refusing to connect means the request never left: trying the same refresh token again is safe.
// A timeout is not (the broker may have rotated the token), so it is not retried.
const NOT_SENT = /ECONNREFUSED|ENOTFOUND|EAI_AGAIN|EHOSTUNREACH|ENETUNREACH/;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function writePrivate(file, text) {
  // Written aside and renamed into place: a tool reading the file never sees half of it.
  const temporary = `${file}.${process.pid}.${crypto.randomBytes(4).toString('hex')}`;
  fs.writeFileSync(temporary, text, { mode: 0o600 });
  for (let attempt = 0; ; attempt += 1) {
    try {
      fs.renameSync(temporary, file);
      return;
    } catch (error) {
      // Windows refuses to replace a file another process has open; that lasts milliseconds.
      if (attempt >= 20 || !['EPERM', 'EACCES', 'EBUSY'].includes(error.code)) {
        fs.rmSync(temporary, { force: true });
        throw error;
      }
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 50); // a synchronous 50 ms pause
    }
  }
}

function readState(dir) {
  return JSON.parse(fs.readFileSync(path.join(dir, STATE), 'utf8'));
}

function saveState(dir, state) {
  writePrivate(path.join(dir, STATE), JSON.stringify(state));
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return error.code === 'EPERM';
  }
}

// One holder at a time: a directory made atomically, naming its holder; a holder that died (or hung
// past any tool's patience) loses it.
async function withLock(dir, work) {
  const lock = path.join(dir, LOCK);
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (;;) {
    try {
      fs.mkdirSync(lock, { mode: 0o700 });
      fs.writeFileSync(path.join(lock, 'pid'), String(process.pid));
      break;
    } catch (error) {
      if (error.code !== 'EEXIST') throw error;
      let stale = false;
      try {
        const holder = Number(fs.readFileSync(path.join(lock, 'pid'), 'utf8'));
        stale = (holder > 0 && !alive(holder)) || Date.now() - fs.statSync(lock).mtimeMs > LOCK_STALE_MS;
      } catch {
        stale = false; // being made or removed right now
      }
      if (stale) {
        fs.rmSync(lock, { recursive: true, force: true });
        continue;
      }
      if (Date.now() > deadline) throw new ActionError('another refresh of this session did not finish');
      await sleep(25 + Math.floor(Math.random() * 50));
    }
  }
  try {
    return await work();
  } finally {
    fs.rmSync(lock, { recursive: true, force: true });
  }
}

function assertionExpiry(token) {
  try {
    const claims = JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString('utf8'));
    return Number.isInteger(claims.exp) ? claims.exp * 1000 : 0;
  } catch {
    return 0;
  }
}

function isFresh(answer) {
  const now = Date.now();
  if (answer.cloud === 'aws') return Date.parse(answer.expiresAt) - now > AWS_MARGIN_MS;
  return assertionExpiry(answer.credentials.federated_token || '') - now > ASSERTION_MARGIN_MS;
}

async function refresh(dir, state, answer) {
  const url = `${state.url}/v1/refresh`;
  const body = state.duration ? { duration: state.duration } : {};
  let why = '';
  for (let attempt = 1; attempt <= HOOK_ATTEMPTS; attempt += 1) {
    if (attempt > 1) await sleep(retry.backoffMs(attempt - 1));
    let response;
    try {
      response = await broker.request('POST', url, `Bearer ${answer.session.refreshToken}`, body, HOOK_TIMEOUT_MS);
    } catch (error) {
      if (!(error instanceof broker.NoAnswer) || !NOT_SENT.test(error.message)) {
        throw new ActionError(`the broker at ${state.url} did not answer the refresh: ${error.message}`);
      }
      why = `the broker at ${state.url} did not answer (${error.message})`;
      continue;
    }
    if (response.status === 200) {
      const next = broker.readAnswer(response.text);
      if (next.cloud !== answer.cloud || !next.session) throw new ActionError("the broker's answer to a refresh is not this session's");
      saveState(dir, { ...state, answer: response.text });
      return next;
    }
    if (response.status === 401 || response.status === 403) {
      // Refused for good (session ended, expired, policy changed): later hooks fail fast with this.
      const message = `the broker refused to refresh this job's session: ${broker.detail(response)}`;
      saveState(dir, { ...state, error: message });
      throw new ActionError(message);
    }
    if (![429, 502, 503].includes(response.status)) {
      throw new ActionError(`unexpected answer from ${url}: ${broker.detail(response)}`);
    }
    why = `the broker answered ${broker.detail(response)}`;
  }
  throw new ActionError(`${why}; gave up after ${HOOK_ATTEMPTS} attempts`);
}

// The session's current answer, refreshed at the broker first when it is no longer fresh.
async function current(dir) {
  if (!dir || !fs.existsSync(path.join(dir, STATE))) {
    throw new ActionError(`no ci-broker session at '${clean(dir || '')}': it ended with the job`);
  }
  return withLock(dir, async () => {
    const state = readState(dir);
    if (state.error) throw new ActionError(state.error);
    const answer = broker.readAnswer(state.answer);
    return isFresh(answer) ? answer : refresh(dir, state, answer);
  });
}

// -- the hooks, as the tools run them ---------------------------------------------------------------

async function awsCredentialProcess(dir) {
  const answer = await current(dir);
  const c = answer.credentials;
  return JSON.stringify({
    Version: 1,
    AccessKeyId: c.access_key_id,
    SecretAccessKey: c.secret_access_key,
    SessionToken: c.session_token,
    Expiration: answer.expiresAt,
  });
}

async function gcpExecutable(dir) {
  // Google's libraries show `message` when `success` is false: the broker's refusal, not a trace.
  try {
    const answer = await current(dir);
    const token = answer.credentials.federated_token;
    const result = { version: 1, success: true, token_type: JWT_TYPE, id_token: token };
    const expiry = assertionExpiry(token);
    if (expiry) result.expiration_time = Math.floor(expiry / 1000);
    return JSON.stringify(result);
  } catch (error) {
    const message = error instanceof ActionError ? error.message : `internal error: ${clean(error.message)}`;
    return JSON.stringify({ version: 1, success: false, code: 'ci_broker_refresh_failed', message: `ci-broker: ${message}` });
  }
}

async function keepAzureTokenFresh(dir) {
  for (;;) {
    if (!fs.existsSync(path.join(dir, STATE))) return; // the session was ended
    let wait = 10 * 1000;
    try {
      const answer = await current(dir);
      const token = answer.credentials.federated_token;
      writePrivate(path.join(dir, AZURE_TOKEN), token);
      wait = Math.max(5000, assertionExpiry(token) - Date.now() - ASSERTION_MARGIN_MS + 1000);
    } catch {
      try {
        if (readState(dir).error) return; // refused for good; the post step reports it
      } catch {
        return;
      }
    }
    await sleep(wait);
  }
}

// -- the main step: set the hooks up ------------------------------------------------------------------

function command(parts) {
  for (const part of parts) {
    if (!SAFE_PATH.test(part)) {
      throw new ActionError(`refresh needs paths without spaces or quotes; this one has some: ${clean(part)}`);
    }
  }
  return parts.join(' ');
}

// Writes the session directory and each hook; returns the environment to export and the directory.
// With `awsProfile` the AWS hook is returned as `credentialProcess` for the caller's named profile
// (lib/awsprofiles.js) instead of a config file of the session's own.
function setUp({ base, url, duration, answerText, answer, script, awsProfile }) {
  const dir = fs.mkdtempSync(path.join(base, 'ci-broker-session-'));
  fs.chmodSync(dir, 0o700);
  saveState(dir, { url, duration, answer: answerText, error: null });
  const node = process.execPath;
  const env = [];
  const c = answer.credentials;
  if (answer.cloud === 'aws') {
    const hook = command([node, '--no-warnings', script, 'aws', dir]);
    if (awsProfile) return { dir, env, credentialProcess: hook };
    const region = c.region && /^[a-z0-9-]+$/.test(c.region) ? `region = ${c.region}\n` : '';
    writePrivate(path.join(dir, AWS_CONFIG), `[profile ${AWS_PROFILE}]\ncredential_process = ${hook}\n${region}`);
    env.push(['AWS_CONFIG_FILE', path.join(dir, AWS_CONFIG)], ['AWS_PROFILE', AWS_PROFILE]);
  } else if (answer.cloud === 'gcp') {
    if (!c.federated_token || !c.audience || !c.token_url) {
      throw new ActionError("refresh on GCP needs the role to set 'federated_token: true' in the broker's config");
    }
    // shlex (google-auth) reads backslashes as escapes; Windows takes forward slashes as well.
    const slashes = (p) => (process.platform === 'win32' ? p.replace(/\\/g, '/') : p);
    const config = {
      type: 'external_account',
      audience: c.audience,
      subject_token_type: JWT_TYPE,
      token_url: c.token_url,
      credential_source: {
        executable: { command: command([node, '--no-warnings', script, 'gcp', dir].map(slashes)), timeout_millis: 60000 },
      },
    };
    if (c.service_account_impersonation_url) config.service_account_impersonation_url = c.service_account_impersonation_url;
    writePrivate(path.join(dir, GCP_CONFIG), JSON.stringify(config, null, 2));
    env.push(
      ['GOOGLE_APPLICATION_CREDENTIALS', path.join(dir, GCP_CONFIG)],
      ['CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE', path.join(dir, GCP_CONFIG)],
      ['GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES', '1'],
    );
  } else {
    if (!c.federated_token) {
      throw new ActionError("refresh on Azure needs the role to set 'federated_token: true' in the broker's config");
    }
    const file = path.join(dir, AZURE_TOKEN);
    writePrivate(file, c.federated_token);
    const daemon = childProcess.spawn(node, ['--no-warnings', script, 'azure', dir], {
      detached: true,
      stdio: 'ignore',
      windowsHide: true,
    });
    fs.writeFileSync(path.join(dir, DAEMON_PID), String(daemon.pid), { mode: 0o600 });
    daemon.unref();
    env.push(['AZURE_FEDERATED_TOKEN_FILE', file], ['ARM_OIDC_TOKEN_FILE_PATH', file], ['ARM_USE_OIDC', 'true']);
  }
  return { dir, env };
}

// -- the post step: end it ----------------------------------------------------------------------------

async function revokeToken(url, refreshToken) {
  const response = await broker.request('POST', `${url}/v1/revoke`, `Bearer ${refreshToken}`, {}, 30000);
  if (response.status !== 200) throw new ActionError(`the broker did not revoke the session: ${broker.detail(response)}`);
}

// Stops the refresher, revokes the session, removes every file. Returns what to report.
async function end(dir) {
  const report = [];
  try {
    const pid = Number(fs.readFileSync(path.join(dir, DAEMON_PID), 'utf8'));
    if (pid > 0) process.kill(pid);
  } catch {
    // no refresher, or it has exited already
  }
  try {
    await withLock(dir, async () => {
      const state = readState(dir);
      if (state.error) report.push(`the session had ended before the job did: ${state.error}`);
      const answer = broker.readAnswer(state.answer);
      await revokeToken(state.url, answer.session.refreshToken);
      report.push('session revoked');
    });
  } catch (error) {
    report.push(error instanceof ActionError ? error.message : `could not revoke the session: ${clean(error.message)}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return report;
}

module.exports = {
  writeTokenFile: writePrivate,
  setUp,
  end,
  revokeToken,
  awsCredentialProcess,
  gcpExecutable,
  keepAzureTokenFresh,
  AWS_PROFILE,
};
