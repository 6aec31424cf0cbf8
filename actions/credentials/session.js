'use strict';
// What the clouds' tools run when they need fresh credentials (set up by main.js with
// `refresh: true`; see lib/session.js):
//   node session.js aws DIR     AWS credential_process: prints the documented JSON (Version 1)
//   node session.js gcp DIR     GCP executable-sourced credential: prints the executable response
//   node session.js azure DIR   keeps DIR's federated token file fresh until the session ends
// Nothing but that JSON goes to stdout (Google's libraries read stderr into it too).

const session = require('./lib/session');
const { ActionError, clean } = require('./lib/runner');

async function run(kind, dir) {
  if (kind === 'aws') process.stdout.write(await session.awsCredentialProcess(dir));
  else if (kind === 'gcp') process.stdout.write(await session.gcpExecutable(dir));
  else if (kind === 'azure') await session.keepAzureTokenFresh(dir);
  else throw new ActionError(`unknown hook ${clean(kind)}`);
}

const [kind, dir] = process.argv.slice(2);
run(kind, dir).catch((error) => {
  process.stderr.write(`ci-broker: ${error instanceof ActionError ? error.message : `internal error: ${clean(error.message)}`}\n`);
  process.exitCode = 1;
});
