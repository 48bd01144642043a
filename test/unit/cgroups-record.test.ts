/**
 * The cgroups record's pure parts (src/cgroups/record.ts): /proc/PID/cgroup parsing, path
 * rules, the allow-list, and the shape checks an image's cgroups.json meets before restore.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { badPath, controlFileRank, controlFiles, lineage, NOT_CARRIED, parseCgroupFile, validateCgroups, within, type CgroupsRecord } from '../../src/cgroups/record.js';

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
    assert.deepEqual(controlFiles('cpu,cpuacct'), ['cpu.shares', 'cpu.cfs_period_us', 'cpu.cfs_quota_us', 'cpu.cfs_burst_us',
      'cpu.rt_period_us', 'cpu.rt_runtime_us', 'cpu.idle', 'cpu.uclamp.min', 'cpu.uclamp.max']);
    assert.deepEqual(controlFiles('devices'), []);
    assert.deepEqual(controlFiles('freezer'), []);
    assert.deepEqual(controlFiles('hugetlb'), ['hugetlb.<size>.limit_in_bytes', 'hugetlb.<size>.rsvd.limit_in_bytes']);
    assert.deepEqual(controlFiles('blkio'), ['blkio.weight', 'blkio.bfq.weight']);
    for (const f of ['cpu.idle', 'cpu.max.burst', 'memory.oom.group', 'memory.swap.high', 'memory.zswap.max', 'io.weight', 'hugetlb.<size>.max']) {
      assert.ok(controlFiles('').includes(f), f);
    }
    for (const f of ['io.max', 'io.latency', 'io.prio.class', 'cgroup.freeze', 'cpuset.cpus.partition', 'devices.list']) {
      assert.ok(!controlFiles('').includes(f) && !controlFiles('blkio,devices,cpuset').includes(f), f);
    }
    // Written in the allow-list's order, whatever the image's: a period before its quota and runtime.
    assert.ok(controlFileRank('cpu,cpuacct', 'cpu.rt_period_us') < controlFileRank('cpu,cpuacct', 'cpu.rt_runtime_us'));
    assert.ok(controlFileRank('cpu', 'cpu.cfs_quota_us') < controlFileRank('cpu', 'cpu.cfs_burst_us'));
    assert.ok(controlFileRank('', 'cpu.max') < controlFileRank('', 'cpu.max.burst'));
    assert.equal(controlFileRank('hugetlb', 'hugetlb.2MB.limit_in_bytes'), 0);
    assert.equal(controlFileRank('', 'hugetlb.1GB.rsvd.max'), controlFiles('').length - 1);
    assert.equal(controlFileRank('', 'hugetlb.2XB.max'), -1);
    assert.deepEqual(controlFiles('name=systemd'), []);
    assert.ok(controlFiles('').includes('memory.max') && !controlFiles('').includes('cgroup.procs'));
  });

  it('takes the newly carried files with values of their shape, and refuses any other value or size', () => {
    const r = good();
    r.hierarchies.push('hugetlb', 'blkio', 'memory');
    r.cgroups.push(
      { hierarchy: 3, path: '/h', settings: { 'hugetlb.2MB.limit_in_bytes': '4194304', 'hugetlb.1GB.rsvd.limit_in_bytes': '0' } },
      { hierarchy: 4, path: '/b', settings: { 'blkio.bfq.weight': '200', 'blkio.weight': '500' } },
      { hierarchy: 5, path: '/m', settings: { 'memory.oom_control': '1', 'memory.kmem.tcp.limit_in_bytes': '99999744' } },
    );
    Object.assign(r.cgroups[3]!.settings, { 'cpu.idle': '1', 'cpu.cfs_burst_us': '20000', 'cpu.rt_period_us': '500000', 'cpu.rt_runtime_us': '-1', 'cpu.uclamp.min': '20.50' });
    Object.assign(r.cgroups[4]!.settings, {
      'cpu.idle': '0', 'cpu.max.burst': '1000', 'cpu.uclamp.max': 'max', 'memory.oom.group': '1', 'memory.swap.high': 'max',
      'memory.zswap.max': '0', 'memory.zswap.writeback': '0', 'io.weight': 'default 200', 'io.bfq.weight': 'default 100',
      'hugetlb.2MB.max': 'max', 'hugetlb.64KB.rsvd.max': '65536', 'cgroup.max.descendants': '10',
    });
    for (const t of r.tasks) t.cgroups.push(5, 6, 7);
    for (const th of r.tasks[0]!.threads!) th.cgroups.push(-1, -1, -1);
    assert.deepEqual(validateCgroups(r, threads), r);
    const bad: Array<[number, string, string, RegExp]> = [
      [4, 'io.weight', '8:0 200', /settings\[io\.weight\] must be "default N", is "8:0 200"/],
      [4, 'io.max', '8:0 rbps=1', /names "io\.max", which is not a control file/],
      [4, 'cpu.idle', '2', /settings\[cpu\.idle\] must be 0 or 1/],
      [4, 'memory.oom.group', 'yes', /must be 0 or 1/],
      [4, 'cpu.max.burst', '-1', /must be a number/],
      [4, 'memory.zswap.max', '1'.repeat(21), /must be "max" or a number/],
      [4, 'cpu.uclamp.min', '1000', /must be "max" or a percentage/],
      [4, 'hugetlb.2MB.max', '1 2', /must be "max" or a number/],
      [4, 'hugetlb.2mb.max', '1', /names "hugetlb\.2mb\.max", which is not a control file/],
      [4, 'hugetlb.0MB.max', '1', /which is not a control file/],
      [4, 'hugetlb.2MB/../x.max', '1', /which is not a control file/],
      [4, 'hugetlb.1234567GB.max', '1', /which is not a control file/],
      [4, 'cgroup.freeze', '1', /which is not a control file/],
      [4, 'cpuset.cpus.partition', 'root', /which is not a control file/],
      [4, 'cgroup.type', 'domain', /must be "threaded"/],
      [4, 'cgroup.subtree_control', 'pids\n+memory', /must be printable text/],
      [4, 'cpu.max', 'max', /must be "QUOTA PERIOD"/],
      [5, 'hugetlb.2MB.max', '1', /which is not a control file/], // a v2 name in v1 hugetlb
      [6, 'blkio.weight_device', '8:0 100', /names "blkio\.weight_device", which is not a control file/],
      [6, 'blkio.throttle.read_bps_device', '8:0 1', /which is not a control file/],
      [6, 'blkio.bfq.weight', 'default 100', /must be a number/],
      [7, 'memory.oom_control', 'oom_kill_disable 1', /must be 0 or 1/],
      [3, 'cpu.rt_runtime_us', '1.5', /must be a number or -1/],
    ];
    for (const [i, file, value, message] of bad) {
      const e = structuredClone(r);
      e.cgroups[i]!.settings[file] = value;
      assert.throws(() => validateCgroups(e, threads), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'EIMAGE');
        assert.match(err.message, message, `${file}=${value}`);
        return true;
      });
    }
  });

  it('knows the defaults of what it does not carry: only a file set otherwise is warned about', () => {
    const check = (key: string, file: string, lines: string[]): boolean => NOT_CARRIED[key]!.find((f) => f.name === file)!.isDefault(lines);
    assert.ok(check('blkio', 'blkio.throttle.read_bps_device', []));
    assert.ok(!check('blkio', 'blkio.throttle.read_bps_device', ['254:0 1048576']));
    assert.ok(check('blkio', 'blkio.bfq.weight_device', ['default 300']));
    assert.ok(!check('blkio', 'blkio.bfq.weight_device', ['default 100', '254:0 50']));
    assert.ok(check('devices', 'devices.list', ['a *:* rwm']));
    assert.ok(!check('devices', 'devices.list', ['c 1:3 rwm']));
    assert.ok(check('freezer', 'freezer.state', ['THAWED']) && !check('freezer', 'freezer.state', ['FROZEN']));
    assert.ok(check('net_prio', 'net_prio.ifpriomap', ['lo 0', 'eth0 0']) && !check('net_prio', 'net_prio.ifpriomap', ['lo 0', 'eth0 3']));
    assert.ok(check('', 'rdma.max', ['mlx4_0 hca_handle=max hca_object=max']) && !check('', 'rdma.max', ['mlx4_0 hca_handle=2 hca_object=max']));
    assert.ok(check('', 'io.prio.class', ['no-change']) && !check('', 'io.prio.class', ['promote-to-rt']));
    assert.ok(check('', 'io.weight', ['default 100']) && !check('', 'io.weight', ['default 100', '8:0 50']));
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
