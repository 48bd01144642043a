/**
 * Network namespaces a test makes for itself (ip netns, named ferry-t-<random>), and bin/ferry
 * run inside one. Entered with nsenter --net only: mounts and everything else stay the test's.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { FERRY } from './env.js';
import type { Run } from './processes.js';

const made: string[] = [];

/** Runs ip(8) with `args`, asserting it succeeds. */
export function ip(...args: string[]): void {
  const r = spawnSync('ip', args, { timeout: 10_000, encoding: 'utf8' });
  assert.equal(r.status, 0, `ip ${args.join(' ')}: ${r.stderr}`);
}

/**
 * A new network namespace of this test, deleted by removeNetns. `nsid`: give it an id in ours
 * (so NETLINK_LISTEN_ALL_NSID sockets hear it); `lo`: bring its loopback interface up.
 */
export function testNetns(opts: { nsid?: boolean; lo?: boolean } = {}): string {
  const ns = `ferry-t-${randomBytes(4).toString('hex')}`;
  ip('netns', 'add', ns);
  made.push(ns);
  if (opts.nsid) ip('netns', 'set', ns, 'auto');
  if (opts.lo) ip('-n', ns, 'link', 'set', 'lo', 'up');
  return ns;
}

/** Sets sysctl `key` (a per-namespace one, net.*) inside namespace `ns` only. */
export function sysctlIn(ns: string, key: string, value: string): void {
  const r = spawnSync('nsenter', [`--net=/run/netns/${ns}`, 'sysctl', '-q', '-w', `${key}=${value}`], { timeout: 10_000, encoding: 'utf8' });
  assert.equal(r.status, 0, `sysctl ${key} in ${ns}: ${r.stderr}`);
}

/** The command line that runs `cmd` inside namespace `ns` (for startWorkload). */
export function inNetns(ns: string, cmd: string, args: string[]): [string, string[]] {
  return ['nsenter', [`--net=/run/netns/${ns}`, '--', cmd, ...args]];
}

/** bin/ferry run inside network namespace `ns`. */
export function ferryIn(ns: string, args: string[]): Run {
  const r = spawnSync('nsenter', [`--net=/run/netns/${ns}`, FERRY, ...args], { timeout: 120_000, encoding: 'utf8' });
  return { code: r.status ?? -1, stdout: Buffer.from(r.stdout ?? ''), stderr: r.stderr ?? '' };
}

/** Deletes every namespace testNetns made (in an after hook: also when a test failed). */
export function removeNetns(): void {
  for (const ns of made.splice(0)) spawnSync('ip', ['netns', 'del', ns], { timeout: 10_000 });
}
