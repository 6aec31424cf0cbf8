'use strict';
// The post step (runs even when the job failed): ends the job's broker session and removes every
// file the main step wrote under RUNNER_TEMP, so nothing taken from the job can be used afterwards.

const fs = require('fs');

const runner = require('./lib/runner');
const session = require('./lib/session');

async function run() {
  const dir = runner.state('session_dir');
  if (dir) {
    for (const line of await session.end(dir)) runner.say(line);
    runner.say('removed the session files');
  }
  const file = runner.state('federated_token_file');
  if (file) {
    try {
      fs.rmSync(file, { force: true });
      runner.say('removed the federated token file');
    } catch (error) {
      runner.annotate('warning', `could not remove ${file}: ${runner.clean(error.message)}`);
    }
  }
}

run().catch((error) => runner.annotate('warning', `cleanup failed: ${runner.clean(error.message)}`));
