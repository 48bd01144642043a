/**
 * criu_opts as ferry's criu reads it (src/runtime/criu-opts.ts) and the policy for each
 * option, the NOTIFY / RESTORE / DUMP answers it encodes (criu-rpc.ts), and the config.json
 * the second runc of a RESTORE gets (criu-swrk.ts sandboxConfig). Pure logic: no root.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { parseCheckpoint } from '../../src/runtime/args.js';
import { decodeOpts, refusal } from '../../src/runtime/criu-opts.js';
import { answer, CriuReqType, decodeRequest, decodeResponse, encodeRequest, encodeResponse } from '../../src/runtime/criu-rpc.js';
import { sandboxConfig } from '../../src/runtime/criu-swrk.js';
import { ProtoError, ProtoWriter } from '../../src/runtime/protobuf.js';

/** criu_opts as runc 1.1.5 sends them for `runc checkpoint --leave-running --tcp-established` (seen with FERRY_CRIU_LOG). */
function runcDumpOpts(): ProtoWriter {
  const w = new ProtoWriter().uint(1, 7).uint(2, 17956).uint(3, true).uint(4, false).uint(5, true).uint(7, false).uint(8, false)
    .uint(9, 4).bytes(10, 'dump.log').uint(12, true).bytes(13, '/tmp/b/rootfs').uint(16, false);
  for (const p of ['/sys/fs/cgroup/cpu', '/proc/keys', '/dev/null']) w.bytes(23, new ProtoWriter().bytes(1, p).bytes(2, p));
  return w.uint(24, true).uint(34, 3).uint(38, 1 << 30).bytes(44, '/sys/fs/cgroup/freezer/c1').uint(48, false).uint(50, true)
    .bytes(51, '/nonexistent/criu/runc.conf');
}

describe('criu_opts', () => {
  it('decodes what runc sends for a checkpoint, and accepts it', () => {
    const o = decodeOpts(runcDumpOpts().finish());
    assert.equal(o.imagesDirFd, 7);
    assert.equal(o.pid, 17956);
    assert.equal(o.leaveRunning, true);
    assert.equal(o.tcpEstablished, true);
    assert.equal(o.extUnixSk, false);
    assert.equal(o.logFile, 'dump.log');
    assert.equal(o.logLevel, 4);
    assert.equal(o.notifyScripts, true);
    assert.equal(o.orphanPtsMaster, true, 'runc always sends orphan_pts_master');
    assert.equal(o.root, '/tmp/b/rootfs');
    assert.equal(o.freezeCgroup, '/sys/fs/cgroup/freezer/c1');
    assert.deepEqual(o.extMnt.map((m) => m.key), ['/sys/fs/cgroup/cpu', '/proc/keys', '/dev/null']);
    assert.equal(refusal(o), undefined);
  });

  it('decodes restore\'s inherit_fd and work_dir_fd', () => {
    const w = new ProtoWriter().uint(1, 7).uint(17, 8).bytes(10, 'restore.log').uint(26, true)
      .bytes(27, new ProtoWriter().bytes(1, 'pipe:[68472]').uint(2, 1))
      .bytes(27, new ProtoWriter().bytes(1, 'extRootNetNS').uint(2, 4))
      .bytes(25, new ProtoWriter().bytes(1, 'freezer').bytes(2, '/c1'));
    const o = decodeOpts(w.finish());
    assert.equal(o.workDirFd, 8);
    assert.deepEqual(o.inheritFd, [{ key: 'pipe:[68472]', fd: 1 }, { key: 'extRootNetNS', fd: 4 }]);
    assert.equal(refusal(o), undefined);
  });

  it('refuses what ferry does not do, naming runc\'s flag', () => {
    const with_ = (f: (w: ProtoWriter) => ProtoWriter): string | undefined => refusal(decodeOpts(f(runcDumpOpts()).finish()));
    assert.equal(with_((w) => w.bytes(11, new ProtoWriter().bytes(1, '127.0.0.1').uint(2, 9))), 'a page server (--page-server) is not supported by ferry');
    assert.equal(with_((w) => w.uint(48, true)), 'lazy pages (--lazy-pages) is not supported by ferry');
    assert.equal(with_((w) => w.bytes(14, '../parent').uint(15, true)), undefined, 'a dump against a pre-dump (criu-track.ts)');
    assert.equal(decodeOpts(runcDumpOpts().bytes(14, '../parent').finish()).parentImg, '../parent');
    assert.match(with_((w) => w.uint(99, 1)) ?? '', /^criu option field 99 \(not known to ferry\) is not supported/);
    assert.equal(with_((w) => w.uint(99, 0)), undefined, 'an unknown option at its zero value is harmless');
    assert.equal(with_((w) => w.bytes(37, 'net[4026531992]:extRootNetNS')), undefined, 'a namespace joined by path is the runtime\'s');
    assert.match(with_((w) => w.bytes(37, 'unix[12345]')) ?? '', /^external resource "unix\[12345\]" is not supported/);
  });

  it('refuses a CRIU configuration file with settings, not an empty or commented one', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ferry-criu-conf-'));
    try {
      const conf = join(dir, 'runc.conf');
      writeFileSync(conf, '# nothing\n\n');
      assert.equal(refusal(decodeOpts(runcDumpOpts().bytes(51, conf).finish())), undefined);
      writeFileSync(conf, 'tcp-close\n');
      assert.match(refusal(decodeOpts(runcDumpOpts().bytes(51, conf).finish())) ?? '', /configuration file .* has settings, which ferry does not read/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses malformed descriptor numbers', () => {
    assert.throws(() => decodeOpts(new ProtoWriter().uint(1, -1).finish()), ProtoError);
    assert.throws(() => decodeOpts(new ProtoWriter().bytes(27, new ProtoWriter().bytes(1, 'pipe:[1]')).finish()), ProtoError);
  });
});

describe('criu RPC answers', () => {
  it('encodes NOTIFY, RESTORE and DUMP answers as CRIU does', () => {
    const n = decodeResponse(encodeResponse({ type: CriuReqType.NOTIFY, success: true, notify: { script: 'post-restore', pid: 4242 } }));
    assert.deepEqual(n, { type: CriuReqType.NOTIFY, success: true, notify: { script: 'post-restore', pid: 4242 } });
    const r = decodeResponse(encodeResponse({ type: CriuReqType.RESTORE, success: true, restore: { pid: 4242 } }));
    assert.deepEqual(r.restore, { pid: 4242 });
    const d = decodeResponse(encodeResponse({ type: CriuReqType.DUMP, success: true, dump: { restored: false } }));
    assert.deepEqual(d.dump, { restored: false });
  });

  it('reads notify_success and keeps opts for the DUMP/RESTORE handler', () => {
    const ack = decodeRequest(new ProtoWriter().uint(1, CriuReqType.NOTIFY).uint(3, true).finish());
    assert.equal(ack.notifySuccess, true);
    const dump = decodeRequest(new ProtoWriter().uint(1, CriuReqType.DUMP).bytes(2, runcDumpOpts()).finish());
    assert.equal(decodeOpts(dump.opts!).pid, 17956);
  });

  it('says memory tracking is available; refuses other requests with one line', () => {
    const f = answer(decodeRequest(encodeRequest(CriuReqType.FEATURE_CHECK, { memTrack: true, lazyPages: true, pidfdStore: true })));
    assert.deepEqual(f.features, { memTrack: true, lazyPages: false, pidfdStore: false });
    const ps = answer(decodeRequest(new ProtoWriter().uint(1, CriuReqType.PAGE_SERVER).finish()));
    assert.match(ps.crErrmsg!, /^PAGE_SERVER is not supported by ferry's criu/);
  });
});

describe('the sandbox config of a RESTORE', () => {
  it('drops hooks, joins criu\'s cgroups, makes the root and relative bind sources absolute', () => {
    const c = sandboxConfig({
      root: { path: 'rootfs', readonly: true },
      hooks: { prestart: [{ path: '/bin/true' }] },
      mounts: [
        { destination: '/data', source: 'data', options: ['rbind', 'rw'] },
        { destination: '/proc', source: 'proc', type: 'proc' },
      ],
      linux: { namespaces: [{ type: 'pid' }], cgroupsPath: '/somewhere' },
    }, '/b');
    assert.equal(c.hooks, undefined);
    assert.deepEqual(c.root, { path: '/b/rootfs', readonly: true });
    assert.equal((c.linux as { cgroupsPath: string }).cgroupsPath, '.');
    assert.deepEqual((c.mounts as Array<{ source: string }>).map((m) => m.source), ['/b/data', 'proc']);
  });
});

describe('ferry-runtime checkpoint: pre-dump flags', () => {
  it('reads --pre-dump and --parent-path as runc does, refusing neither', () => {
    const pre = parseCheckpoint(['--pre-dump', '--image-path', '/x/pre', 'c1']);
    assert.deepEqual([pre.preDump, pre.parentPath, pre.unsupported], [true, undefined, []]);
    const dump = parseCheckpoint(['--parent-path', '../pre', '--image-path', '/x/full', 'c1']);
    assert.deepEqual([dump.preDump, dump.parentPath, dump.unsupported], [false, '../pre', []]);
    assert.deepEqual(parseCheckpoint(['--lazy-pages', 'c1']).unsupported, ['--lazy-pages']);
  });
});
