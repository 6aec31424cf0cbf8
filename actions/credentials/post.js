'use strict';
// The post step (runs even when the job failed): ends the job's broker session, removes every
// file the main step wrote under RUNNER_TEMP, and clears the variables it exported, so nothing
// taken from the job can be used afterwards and the post steps of other actions (which run after
// this one) do not run with the credentials.

const fs = require('fs');

const runner = require('./lib/runner');
const session = require('./lib/session');

function remove(file, what) {
  try {
    fs.rmSync(file, { recursive: true, force: true });
    runner.say(`removed ${what}`);
  } catch (error) {
    runner.annotate('warning', `could not remove ${file}: ${runner.clean(error.message)}`);
  }
}

async function run() {
  const dir = runner.state('session_dir');
  if (dir) {
    for (const line of await session.end(dir)) runner.say(line);
    runner.say('removed the session files');
  }
  const file = runner.state('federated_token_file');
  if (file) remove(file, 'the federated token file');
  const profiles = runner.state('aws_profile_dir');
  if (profiles) remove(profiles, 'the AWS profile files');
  const exported = runner.state('exported').split(' ').filter((name) => /^[A-Z][A-Z0-9_]*$/.test(name));
  for (const name of exported) runner.exportVariable(name, '');
  if (exported.length) runner.say(`cleared ${exported.join(' ')}`);
}

run().catch((error) => runner.annotate('warning', `cleanup failed: ${runner.clean(error.message)}`));
