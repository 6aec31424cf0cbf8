'use strict';
// Post step: removes the azure federated token file that ci-broker.sh wrote under RUNNER_TEMP
// (it names the file through GITHUB_STATE). Runs even when the job failed.
const fs = require('fs');

const file = process.env.STATE_federated_token_file;
if (file) {
  try {
    fs.rmSync(file, { force: true });
    console.log('ci-broker: removed the federated token file');
  } catch (error) {
    console.log(`::warning title=ci-broker::could not remove ${file}: ${error.message}`);
  }
}
