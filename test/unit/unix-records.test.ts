/**
 * The unix record's fields for queued messages, as an untrusted image gives them
 * (src/files/unix.ts check and open): descriptors in flight per message (SCM_MAX_FD), in all,
 * and naming files of the image; the senders' credentials. Pure: no socket is made.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { FerryError } from '../../src/errors.js';
import { DEFAULT_FILE_OPTIONS, type OpenContext } from '../../src/files/types.js';
import { unix, type UnixRecord } from '../../src/files/unix.js';

/** An unnamed datagram socket with `n` queued messages of one byte. */
function rec(n: number, over: Partial<UnixRecord> = {}): UnixRecord {
  return {
    id: 1, kind: 'unix', ino: '1', type: 'dgram', flags: 0, role: 'unconnected', name: null, peer: null, listener: null,
    shutdown: 0, opts: { passcred: 0, passsec: 0, passpidfd: 0, rcvbuf: 4096, sndbuf: 4096, peekOff: -1, rcvlowat: 1 },
    queue: n > 0 ? 'files/1-queue' : null, messages: Array.from({ length: n }, () => 1), ...over,
  };
}

const refused = (r: UnixRecord, text: RegExp): void => {
  assert.throws(() => unix.check!(r), (err: unknown) => err instanceof FerryError && err.code === 'EIMAGE' && text.test(err.message));
};

describe('unix records: messages with descriptors and credentials', () => {
  it('accepts descriptors and credentials within bounds', () => {
    unix.check!(rec(2, { fds: [[2, 3], []], creds: [{ pid: 42, uid: 0, gid: 0 }, { pid: null, uid: 1000, gid: 1000 }] }));
    unix.check!(rec(1, { fds: [Array.from({ length: 253 }, (_, i) => i + 2)], creds: [null] }));
  });

  it('refuses more than SCM_MAX_FD per message, lists not one per message, ids that are not ids', () => {
    refused(rec(1, { fds: [Array.from({ length: 254 }, (_, i) => i + 2)] }), /at most 253 file ids per message/);
    refused(rec(2, { fds: [[2]] }), /one list per message/);
    refused(rec(1, { fds: [[0]] }), /descriptors in flight/);
    refused(rec(1, { fds: [['2' as unknown as number]] }), /descriptors in flight/);
    refused(rec(1, { fds: [2] as unknown as number[][] }), /descriptors in flight/);
  });

  it('refuses more than 65,536 descriptors in flight on one socket', () => {
    const fds = Array.from({ length: 300 }, () => Array.from({ length: 253 }, (_, i) => i + 2));
    refused(rec(300, { fds }), /more than 65536 descriptors in flight/);
  });

  it('refuses credentials that no sender can have', () => {
    refused(rec(1, { creds: [{ pid: 0, uid: 0, gid: 0 }] }), /invalid credentials/);
    refused(rec(1, { creds: [{ pid: 1 << 22, uid: 0, gid: 0 }] }), /invalid credentials/);
    refused(rec(1, { creds: [{ pid: 1, uid: 2 ** 32 - 1, gid: 0 }] }), /invalid credentials/);
    refused(rec(1, { creds: [{ pid: 1, uid: 0, gid: -1 }] }), /invalid credentials/);
    refused(rec(2, { creds: [null] }), /invalid credentials/);
  });

  it('a message carrying a file the image does not have is refused before any socket is made', () => {
    const ctx: OpenContext = {
      options: DEFAULT_FILE_OPTIONS,
      opened: () => undefined,
      record: (id) => (id === 1 ? rec(1) : undefined),
      records: () => [rec(1)],
      inherited: () => false,
      blob: () => Buffer.alloc(1),
      scratch: <T>(): Map<string, T> => new Map(),
      hold: () => {},
      release: () => {},
    };
    assert.throws(() => unix.open(rec(1, { fds: [[7]] }), ctx),
      (err: unknown) => err instanceof FerryError && err.code === 'EIMAGE' && /carrying file 7, which is not in the image/.test(err.message));
  });
});
