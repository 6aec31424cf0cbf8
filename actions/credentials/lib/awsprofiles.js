'use strict';
// Named AWS profiles for a job with several AWS roles (`aws-profile` input): each step of the
// Action adds its role as one profile to one pair of files under RUNNER_TEMP that every step
// shares, the SDKs' own AWS_SHARED_CREDENTIALS_FILE (static keys) and AWS_CONFIG_FILE (region, and
// with `refresh` the credential_process hook). Later steps choose a role with `--profile NAME` or
// `AWS_PROFILE: NAME`. The profiles live in profiles.json beside the files, and both files are
// written again from it whole, so one step never has to parse what another wrote. The post step
// removes the directory.

const fs = require('fs');
const path = require('path');

const { ActionError } = require('./runner');
const { writeTokenFile: writePrivate } = require('./session');

const DIR = 'ci-broker-aws-profiles';
const PROFILES = 'profiles.json';
// A profile name that is one word in an INI section header and a command-line argument.
const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
// Values that go into the INI files must stay on their line.
const ONE_LINE = /^[\x21-\x7e]+$/;

function checkName(name) {
  if (!NAME.test(name)) throw new ActionError("aws-profile must be a profile name: 1-64 letters, digits, '.', '_' or '-'");
  return name;
}

function line(key, value) {
  if (!ONE_LINE.test(value)) throw new ActionError(`a value for ${key} cannot go into an AWS profile file`);
  return `${key} = ${value}\n`;
}

function readProfiles(base) {
  const file = path.join(base, DIR, PROFILES);
  return fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, 'utf8')) : {};
}

// Two roles in one profile would leave the job with whichever came last, silently: refused, before
// the exchange. The same role again (a later step renewing it) replaces its own profile.
function requireFree(base, name, role) {
  const holder = readProfiles(base)[name];
  if (holder && holder.role !== role) {
    throw new ActionError(`AWS profile '${name}' is already written by another role of this job ('${holder.role}'): give each role its own aws-profile`);
  }
}

// Adds (or replaces) profile `name` for `role`: {credentials} for static keys, or
// {credentialProcess} for the refresh hook; `region` when known. Returns the directory and the
// variables to export.
function addProfile(base, name, { role, credentials, credentialProcess, region }) {
  requireFree(base, name, role);
  const dir = path.join(base, DIR);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  fs.chmodSync(dir, 0o700);
  const file = path.join(dir, PROFILES);
  const profiles = readProfiles(base);
  profiles[name] = { role, credentials: credentials || null, credentialProcess: credentialProcess || null, region: region || null };
  let config = '';
  let shared = '';
  for (const [profile, p] of Object.entries(profiles).sort(([a], [b]) => a.localeCompare(b))) {
    config += `[profile ${profile}]\n`;
    if (p.region) config += line('region', p.region);
    if (p.credentialProcess) config += `credential_process = ${p.credentialProcess}\n`;
    if (p.credentials) {
      shared += `[${profile}]\n`;
      shared += line('aws_access_key_id', p.credentials.access_key_id);
      shared += line('aws_secret_access_key', p.credentials.secret_access_key);
      shared += line('aws_session_token', p.credentials.session_token);
    }
  }
  writePrivate(path.join(dir, 'config'), config);
  writePrivate(path.join(dir, 'credentials'), shared);
  writePrivate(file, JSON.stringify(profiles));
  return {
    dir,
    env: [
      ['AWS_CONFIG_FILE', path.join(dir, 'config')],
      ['AWS_SHARED_CREDENTIALS_FILE', path.join(dir, 'credentials')],
    ],
  };
}

module.exports = { checkName, requireFree, addProfile };
