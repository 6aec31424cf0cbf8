'use strict';
// The GitHub runner's interface as its own toolkit speaks it, without the toolkit: inputs from
// INPUT_* variables, workflow commands on stdout, and the environment files GITHUB_ENV,
// GITHUB_OUTPUT and GITHUB_STATE (heredoc syntax with a random delimiter).

const crypto = require('crypto');
const fs = require('fs');
const os = require('os');

class ActionError extends Error {
  // `lines` are shown after the message, one per log line (the fix, the next step).
  constructor(message, ...lines) {
    super(message);
    this.lines = lines;
  }
}

function input(name) {
  // The runner passes input `broker-url` as INPUT_BROKER-URL (upper case, spaces to _).
  const key = `INPUT_${name.replace(/ /g, '_').toUpperCase()}`;
  return (process.env[key] || process.env[key.replace(/-/g, '_')] || '').trim();
}

// Text that goes into a workflow command cannot end the command or start another one.
function escapeData(text) {
  return String(text).replace(/%/g, '%25').replace(/\r/g, '%0D').replace(/\n/g, '%0A');
}

// Untrusted text (the broker's message, an error) on one line of printable ASCII: it can neither
// forge a workflow command nor break the log.
function clean(text) {
  return String(text)
    .replace(/[\u0000-\u001f\u007f]/g, '')
    .replace(/[^\u0020-\u007e]/g, '?')
    .slice(0, 400);
}

// Progress and errors go to stderr; stdout carries only workflow commands (masks first).
function say(text) {
  process.stderr.write(`ci-broker: ${text}${os.EOL}`);
}

function mask(value) {
  if (value) process.stdout.write(`::add-mask::${escapeData(value)}${os.EOL}`);
}

// A collapsed group in the job's log: the title and each line cleaned to one line of printable
// ASCII, and no line starting with "::", so nothing in it can start or end a workflow command.
function group(title, lines) {
  process.stdout.write(`::group::${escapeData(clean(title))}${os.EOL}`);
  for (const line of lines) {
    const text = clean(line);
    process.stdout.write(`${/^\s*::/.test(text) ? `- ${text}` : text}${os.EOL}`);
  }
  process.stdout.write(`::endgroup::${os.EOL}`);
}

function annotate(kind, text) {
  process.stdout.write(`::${kind} title=ci-broker::${escapeData(text)}${os.EOL}`);
}

function fail(error) {
  const lines = error instanceof ActionError ? [error.message, ...error.lines] : [`internal error: ${clean(error && error.message)}`];
  annotate('error', lines[0]);
  for (const line of lines) say(line);
  process.exitCode = 1;
}

function putFile(variable, name, value) {
  const file = process.env[variable];
  if (!file) throw new ActionError(`${variable} is not set: run this as a GitHub Actions step`);
  const delimiter = `ghadelimiter_${crypto.randomUUID()}`;
  if (String(value).includes(delimiter)) throw new ActionError(`a value collides with the ${variable} delimiter`);
  fs.appendFileSync(file, `${name}<<${delimiter}${os.EOL}${value}${os.EOL}${delimiter}${os.EOL}`, 'utf8');
}

const exportVariable = (name, value) => putFile('GITHUB_ENV', name, value);
const setOutput = (name, value) => putFile('GITHUB_OUTPUT', name, value);
const saveState = (name, value) => putFile('GITHUB_STATE', name, value);
const state = (name) => process.env[`STATE_${name}`] || '';

module.exports = { ActionError, input, clean, say, mask, group, annotate, fail, exportVariable, setOutput, saveState, state };
