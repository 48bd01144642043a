/**
 * checkSocketPrivilege (src/restore/socket-privilege.ts): the socket privileges an untrusted
 * image may not carry unless a holder's restored credentials have the capability.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { FileRecord, TaskRecord } from '../../src/image/records.js';
import { checkSocketPrivilege } from '../../src/restore/socket-privilege.js';

type Task = Pick<TaskRecord, 'pid' | 'comm' | 'creds' | 'fds'>;

/** A task holding file 1 at fd 3 with effective capabilities `eff` (hex). */
const task = (eff: string): Task => ({
  pid: 42, comm: 'app', fds: [{ fd: 3, file: 1, cloexec: false }],
  creds: { threads: [{ caps: { effective: eff } }] } as unknown as TaskRecord['creds'],
});
const NET_ADMIN = `0x${(1n << 12n).toString(16)}`, NET_RAW = `0x${(1n << 13n).toString(16)}`;
const check = (f: Partial<FileRecord>, eff: string): void => checkSocketPrivilege('x.tar', [task(eff)], [{ id: 1, kind: 'inet', ...f } as FileRecord]);

describe('socket privileges of an untrusted image', () => {
  it('a packet socket needs CAP_NET_RAW', () => {
    assert.throws(() => check({ kind: 'packet' }, '0x0'), /pid 42 \(app\) fd 3 would get a packet socket, which needs CAP_NET_RAW when it is made, and its credentials have no CAP_NET_RAW/);
    assert.doesNotThrow(() => check({ kind: 'packet' }, NET_RAW));
  });

  it('netlink groups need CAP_NET_ADMIN unless anyone may join them (route, uevent)', () => {
    assert.throws(() => check({ kind: 'netlink', protocol: 9, groups: [1] }, '0x0'), /netlink socket \(protocol 9\) in multicast groups only administrators may join, which needs CAP_NET_ADMIN/);
    assert.doesNotThrow(() => check({ kind: 'netlink', protocol: 0, groups: [1] }, '0x0'));
    assert.doesNotThrow(() => check({ kind: 'netlink', protocol: 9, groups: [] }, '0x0'));
    assert.doesNotThrow(() => check({ kind: 'netlink', protocol: 9, groups: [1] }, NET_ADMIN));
  });

  it('IP_TRANSPARENT, SO_MARK and SO_PRIORITY above 6 need CAP_NET_RAW or CAP_NET_ADMIN', () => {
    for (const opts of [{ ip_transparent: 1 }, { ipv6_transparent: 1 }, { mark: 7 }, { priority: 7 }]) {
      assert.throws(() => check({ opts }, '0x0'), /needs CAP_NET_RAW or CAP_NET_ADMIN when it is made, and its credentials have neither/, JSON.stringify(opts));
      assert.doesNotThrow(() => check({ opts }, NET_RAW));
      assert.doesNotThrow(() => check({ opts }, NET_ADMIN));
    }
    assert.doesNotThrow(() => check({ opts: { priority: 6, mark: 0, ip_transparent: 0 } }, '0x0'));
  });

  it('a buffer past net.core\'s ceiling needs CAP_NET_ADMIN', () => {
    assert.throws(() => check({ opts: { rcvbuf: 2 ** 31 - 1 } }, '0x0'), /SO_RCVBUF 2147483647, past net\.core\.rmem_max, which needs CAP_NET_ADMIN/);
    assert.doesNotThrow(() => check({ opts: { rcvbuf: 4096 } }, '0x0'));
  });

  it('a raw IP socket needs CAP_NET_RAW', () => {
    assert.throws(() => check({ proto: 'raw', opts: {} }, '0x0'), /would get a raw IP socket, which needs CAP_NET_RAW/);
    assert.doesNotThrow(() => check({ proto: 'raw', opts: {} }, NET_RAW));
  });

  it('a socket no process holds needs nothing', () => {
    assert.doesNotThrow(() => checkSocketPrivilege('x.tar', [], [{ id: 1, kind: 'packet' }]));
  });
});
