/**
 * `ferry check` on this host, through bin/ferry: as root every check that checkpoint and
 * restore need passes and the command exits 0; its JSON has one entry per line; a broken
 * host key and a caller that is not root each make a needed check fail, with what to do,
 * and exit 1.
 */
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { after, describe, it } from 'node:test';
import { FERRY, needs } from '../helpers/env.js';
import { cleanup, ferry, scratchDir } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

interface Report {
  ok: boolean;
  checks: Array<{ name: string; status: 'ok' | 'warn' | 'fail' | 'info'; detail: string }>;
}

/** The checks checkpoint and restore cannot work without (src/cli/check.ts `needed`). */
const NEEDED = ['node', 'root', 'addon', 'ptrace', 'checkpoint_restore', 'clone3_set_tid', 'kcmp', 'pidfd_getfd', 'openat2', 'host_key'];

describe('ferry check', { skip, timeout: 120_000 }, () => {
  const dir = scratchDir('ferry-check-');

  it('as root on this host: every needed check passes, exit 0; the text and the JSON say the same', () => {
    const js = ferry(['check', '--json']);
    assert.equal(js.code, 0, js.stderr);
    const report = JSON.parse(js.stdout.toString()) as Report;
    assert.equal(report.ok, true);
    for (const name of NEEDED) {
      const c = report.checks.find((x) => x.name === name);
      assert.ok(c, `check ${name} is reported`);
      assert.ok(c.status === 'ok' || c.status === 'info', `${name}: ${c.status} ${c.detail}`);
    }
    for (const c of report.checks) assert.ok(c.detail.length > 0 && !c.detail.includes('\n'), `${c.name} has a one-line detail`);
    // Facts of this machine (docs/shared: kernel 6.18, no soft-dirty, runc installed).
    assert.match(report.checks.find((c) => c.name === 'soft_dirty')!.detail, /^no soft-dirty/);
    assert.match(report.checks.find((c) => c.name === 'clone3_set_tid')!.detail, /^clone3 with set_tid/);

    const text = ferry(['check']);
    assert.equal(text.code, 0, text.stderr);
    const lines = text.stdout.toString().trimEnd().split('\n');
    assert.equal(lines.length, report.checks.length + 1);
    report.checks.forEach((c, i) => assert.match(lines[i]!, new RegExp(`^${c.status} +${c.name} +`)));
    assert.match(lines.at(-1)!, /^checkpoint and restore can work on this host/);
  });

  it('a host key others can read fails the host_key check, naming the file and what to do; exit 1', () => {
    mkdirSync(join(dir, 'state'), { mode: 0o700 });
    const key = join(dir, 'state', 'host.key');
    writeFileSync(key, 'not a key', { mode: 0o644 });
    chmodSync(key, 0o644);
    const config = join(dir, 'bad.toml');
    writeFileSync(config, `[image]\nhost_key = "${key}"\n`);
    const r = ferry(['check', '--config', config, '--json']);
    assert.equal(r.code, 1, r.stderr);
    const report = JSON.parse(r.stdout.toString()) as Report;
    assert.equal(report.ok, false);
    assert.deepEqual(report.checks.filter((c) => c.status === 'fail'), [{
      name: 'host_key', status: 'fail',
      detail: `host key ${key} must be a small regular file of root's with mode 600 (it is uid 0, mode 644, 9 bytes): fix or remove it`,
    }]);
  });

  it('not root: the root check fails with what to do; exit 1', (t) => {
    const nobody = ['--reuid=65534', '--regid=65534', '--clear-groups'];
    if (spawnSync('/usr/bin/setpriv', [...nobody, '/usr/bin/test', '-x', FERRY]).status !== 0) {
      t.skip(`nobody cannot reach ${FERRY} (a directory on its way is closed to others)`);
      return;
    }
    const r = spawnSync('/usr/bin/setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', FERRY, 'check'], { timeout: 60_000, encoding: 'utf8' });
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stdout, /^fail +root +not running as root: run ferry as root \(sudo\)$/m);
    assert.match(r.stdout, /^info +host_key +host key \S+ not checked: only root may read it$/m);
    assert.match(r.stdout.trimEnd().split('\n').at(-1)!, /^checkpoint and restore cannot work on this host: \d+ checks? failed/);
  });
});
