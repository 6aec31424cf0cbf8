'use strict';
// The action's logic is ci-broker.sh, the same POSIX client the GitLab template inlines. Node is
// here only because a composite action cannot have a post step, and the azure federated token
// file must be deleted when the job ends. No dependencies: the runner's own node runs this file.
const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

function input(name) {
  // The runner passes input `broker-url` as INPUT_BROKER-URL (case kept, spaces to _).
  const key = `INPUT_${name.replace(/ /g, '_').toUpperCase()}`;
  return (process.env[key] || process.env[key.replace(/-/g, '_')] || '').trim();
}

function posixShell() {
  if (process.platform !== 'win32') {
    return fs.existsSync('/bin/sh') ? '/bin/sh' : 'sh';
  }
  // Git for Windows' bash, the one `shell: bash` steps use; never WSL's System32\bash.exe.
  const candidates = [];
  for (const base of [process.env.ProgramFiles, process.env['ProgramW6432'], 'C:\\Program Files']) {
    if (base) candidates.push(path.join(base, 'Git', 'bin', 'bash.exe'));
  }
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    if (dir && !/\\(system32|windowsapps)\b/i.test(dir)) candidates.push(path.join(dir, 'bash.exe'));
  }
  return candidates.find((file) => fs.existsSync(file));
}

const shell = posixShell();
if (!shell) {
  console.log('::error title=ci-broker::no POSIX shell found (on Windows, install Git for Windows)');
  process.exit(1);
}
const env = { ...process.env };
Object.assign(env, {
  CI_BROKER_TARGET: 'github',
  CI_BROKER_URL: input('broker-url'),
  CI_BROKER_ROLE: input('role'),
  CI_BROKER_AUDIENCE: input('audience') || input('broker-url'),
  CI_BROKER_DURATION: input('duration'),
  CI_BROKER_EXPORT_ENV: input('export-env') || 'true',
  CI_BROKER_OUTPUT_CREDENTIALS: input('output-credentials') || 'false',
});
const result = spawnSync(shell, [path.join(__dirname, 'ci-broker.sh')], { env, stdio: 'inherit' });
if (result.error) {
  console.log(`::error title=ci-broker::cannot run ${shell}: ${result.error.message}`);
  process.exit(1);
}
process.exit(result.status === null ? 1 : result.status);
