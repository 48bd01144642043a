/**
 * The cgroups record's pure parts (src/cgroups/record.ts): /proc/PID/cgroup parsing, path
 * rules, the allow-list, and the shape checks an image's cgroups.json meets before restore.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { badPath, controlFiles, lineage, parseCgroupFile, validateCgroups, within, type CgroupsRecord } from '../../src/cgroups/record.js';

const good = (): CgroupsRecord => ({
  hierarchies: ['pids', 'cpu,cpuacct', ''],
  cgroups: [
    { hierarchy: 0, path: '/', settings: {} },
    { hierarchy: 0, path: '/a', settings: { 'pids.max': 'max' } },
    { hierarchy: 0, path: '/a/b', settings: { 'pids.max': '10' } },
    { hierarchy: 1, path: '/x', settings: { 'cpu.shares': '512', 'cpu.cfs_quota_us': '-1' } },
    { hierarchy: 2, path: '/y', settings: { 'memory.max': 'max', 'cpu.max': 'max 100000' } },
  ],
  tasks: [{ pid: 10, cgroups: [2, 3, 4], threads: [{ tid: 11, cgroups: [1, 3, 4] }] }],
});
const threads = new Map([[10, [10, 11]]]);

describe('cgroups record', () => {
  it('parses /proc/PID/cgroup: v1 by controllers, v2 as ""', () => {
    const m = parseCgroupFile('9:name=systemd:/\n4:memory:/process_api/x\n2:cpu,cpuacct:/a b\n0::/\n');
    assert.deepEqual([...m], [['name=systemd', '/'], ['memory', '/process_api/x'], ['cpu,cpuacct', '/a b'], ['', '/']]);
  });

  it('paths: absolute, no "..", ".", empty parts or control characters', () => {
    assert.equal(badPath('/'), undefined);
    assert.equal(badPath('/a/b c'), undefined);
    for (const p of ['a', '/a/../b', '/a/./b', '/a//b', '/a/', '/a\nb', 7, `/${'x'.repeat(256)}`]) assert.notEqual(badPath(p), undefined, String(p));
    assert.deepEqual(lineage('/a/b/c'), ['/a', '/a/b', '/a/b/c']);
    assert.ok(within('/a/b', '/a') && within('/a', '/a') && within('/z', '/'));
    assert.ok(!within('/ab', '/a') && !within('/', '/a'));
  });

  it('the allow-list: limits per controller, nothing that names devices or tasks', () => {
    assert.deepEqual(controlFiles('cpu,cpuacct'), ['cpu.shares', 'cpu.cfs_period_us', 'cpu.cfs_quota_us']);
    assert.deepEqual(controlFiles('devices'), []);
    assert.deepEqual(controlFiles('name=systemd'), []);
    assert.ok(controlFiles('').includes('memory.max') && !controlFiles('').includes('cgroup.procs'));
  });

  it('validates a record and refuses each bad field by name', () => {
    assert.deepEqual(validateCgroups(good(), threads), good());
    const bad: Array<[(r: CgroupsRecord) => void, RegExp]> = [
      [(r) => { r.cgroups[2]!.path = '/a/../../etc'; }, /cgroups\[2\]\.path must be a path without/],
      [(r) => { r.cgroups[2]!.settings['devices.allow'] = 'a'; }, /names "devices\.allow", which is not a control file/],
      [(r) => { r.cgroups[1]!.settings['pids.max'] = 'x\ny'; }, /must be printable text/],
      [(r) => { r.cgroups.splice(1, 1); }, /comes before its parent/],
      [(r) => { r.cgroups.push({ hierarchy: 0, path: '/a', settings: {} }); }, /is listed twice/],
      [(r) => { r.cgroups[0]!.hierarchy = 3; }, /must index hierarchies/],
      [(r) => { r.hierarchies[0] = '../x'; }, /hierarchies\[0\] must be/],
      [(r) => { r.tasks[0]!.pid = 1; }, /tasks\[0\]\.pid 1 is not a process of the image/],
      [(r) => { r.tasks[0]!.cgroups = [3, 3, 4]; }, /names a cgroup of another hierarchy/],
      [(r) => { r.tasks[0]!.cgroups = [2, 3]; }, /one index per hierarchy/],
      [(r) => { r.tasks[0]!.threads![0]!.tid = 12; }, /tid 12 is not another thread of pid 10/],
      [(r) => { r.tasks[0]!.cgroups[0] = 99; }, /must index cgroups or be -1/],
    ];
    for (const [edit, message] of bad) {
      const r = good();
      edit(r);
      assert.throws(() => validateCgroups(r, threads), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'EIMAGE');
        assert.match(err.message, /^image entry cgroups\.json is invalid: /);
        assert.match(err.message, message);
        return true;
      });
    }
  });
});
