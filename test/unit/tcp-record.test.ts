/**
 * The TCP part of an inet record is untrusted input (src/files/tcp.ts checkTcp, through the
 * inet kind's check): every field bounded and typed before anything is made; and the segment a
 * restore sends to a socket from its peer's address (tcp-segment.ts) has the right headers and
 * checksums. Pure: no root, no socket.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { inet, type InetRecord } from '../../src/files/inet.js';
import { buildPacket, TH_ACK, TH_FIN, TH_PSH, TH_URG } from '../../src/files/tcp-segment.js';

function established(over: Record<string, unknown> = {}, tcp: Record<string, unknown> = {}): InetRecord {
  return {
    id: 7, kind: 'inet', family: 'ipv4', proto: 'tcp', ino: '1', flags: 0, state: 'established',
    local: { address: '127.0.0.1', port: 4000 }, remote: { address: '127.0.0.1', port: 5000 }, opts: {},
    tcp: {
      sendSeq: 1, recvSeq: 2, sendQueue: '', sendBytes: 0, unsentBytes: 0, recvQueue: '', recvBytes: 0, mss: 1460,
      sndWscale: 7, rcvWscale: 7, sack: true, timestamps: true, tsval: 5, window: [2, 65536, 65536, 65536, 2], ...tcp,
    },
    peer: null, after: [],
    ...over,
  } as InetRecord;
}

/** The record without its repair state. */
function bare(rec: InetRecord): InetRecord {
  const { tcp: _tcp, ...rest } = rec;
  return rest as InetRecord;
}

const refused = (rec: InetRecord, why: RegExp): void => {
  assert.throws(() => inet.check!(rec), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'EIMAGE');
    assert.match(err.message, /^image: inet socket \(file 7\) /);
    assert.match(err.message, why);
    return true;
  });
};

describe('TCP records', () => {
  it('accepts every synchronized state, and SYN_SENT without repair state', () => {
    inet.check!(established());
    for (const state of ['FIN_WAIT1', 'CLOSE_WAIT', 'LAST_ACK', 'CLOSING']) inet.check!(established({}, { state }));
    inet.check!(established({}, { state: 'FIN_WAIT1', finUnsent: true, sendBytes: 10, unsentBytes: 10 }));
    inet.check!(established({}, { state: 'FIN_WAIT2' }));
    inet.check!(bare(established({ state: 'syn-sent' })));
    inet.check!(bare(established())); // checkpointed with --tcp-close: only its addresses
    inet.check!(established({}, { recvBytes: 7, urgent: { at: 0 } }));
    inet.check!(established({}, { recvBytes: 7, urgent: { at: 6, read: true } }));
  });

  it('refuses what a restore cannot build, naming the field (with or without options)', () => {
    refused(established({}, { state: 'TIME_WAIT' }), /invalid TCP state "TIME_WAIT"/);
    refused(established({}, { finUnsent: 'yes' }), /invalid finUnsent/);
    refused(established({}, { state: 'CLOSE_WAIT', finUnsent: true }), /unsent FIN in CLOSE_WAIT/);
    refused(established({}, { state: 'FIN_WAIT2', finUnsent: true }), /unsent FIN in FIN_WAIT2/);
    refused(established({}, { state: 'FIN_WAIT2', sendBytes: 3 }), /bytes queued after its acknowledged FIN/);
    refused(established({}, { sendSeq: 2 ** 32 }), /invalid sendSeq/);
    refused(established({}, { recvBytes: -1 }), /invalid recvBytes/);
    refused(established({}, { unsentBytes: 5 }), /more unsent bytes than queued/);
    refused(established({}, { sndWscale: 15 }), /invalid sndWscale/);
    refused(established({}, { window: [1, 2, 3, 4, -5] }), /invalid window/);
    refused(established({}, { sendQueue: 12 }), /invalid queue entries/);
    refused({ ...established(), tcp: 'x' } as unknown as InetRecord, /no repair state/);
    refused(established({ remote: null }), /without both addresses/);
    refused(bare(established({ state: 'syn-sent', proto: 'udp' })), /has state syn-sent for a udp socket/);
    refused(established({ opts: { tcp_nodelay: 1 } }, { state: 'NOPE' }), /invalid TCP state/);
    refused(established({ after: 'x' }), /invalid listeners to open first/);
    refused(established({ after: Array<number>(65).fill(1) }), /invalid listeners to open first/);
    refused(established({ peer: 0 }), /invalid peer/);
    refused(bare(established({ state: 'syn-sent', after: [1.5] })), /invalid listeners to open first/);
    for (const urgent of [{ at: 7 }, { at: -1 }, { at: 1.5 }, { at: 0, read: 1 }, { at: 0, byte: 88 }, 'x', null]) {
      refused(established({}, { recvBytes: 7, urgent }), /invalid urgent mark/);
    }
    refused(established({}, { recvBytes: 0, urgent: { at: 0 } }), /invalid urgent mark/);
  });
});

/** RFC 1071: the ones' complement sum over a header with its checksum in it is 0xffff. */
function sums(parts: Buffer[]): number {
  const all = Buffer.concat(parts);
  let s = 0;
  for (let i = 0; i + 1 < all.length; i += 2) s += all.readUInt16BE(i);
  if (all.length % 2) s += all[all.length - 1]! << 8; // an odd last byte, padded with zero
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
}

describe('a segment from the peer', () => {
  it('IPv4 (and IPv4-mapped IPv6): 20-byte IP header, TCP header with a right checksum', () => {
    for (const [from, to] of [['10.1.2.2', '10.1.2.1'], ['::ffff:10.1.2.2', '::ffff:10.1.2.1']] as const) {
      const { packet, family, dst } = buildPacket({
        from: { address: from, port: 5000 }, to: { address: to, port: 4000 }, seq: 0xfffffffe, ack: 7, flags: TH_FIN | TH_ACK, window: 512,
      });
      assert.equal(family, 2);
      assert.equal(dst, '10.1.2.1');
      assert.equal(packet.length, 40);
      assert.equal(packet[0], 0x45);
      assert.equal(packet[9], 6);
      assert.deepEqual([...packet.subarray(12, 20)], [10, 1, 2, 2, 10, 1, 2, 1]);
      const tcp = packet.subarray(20);
      assert.equal(tcp.readUInt16BE(0), 5000);
      assert.equal(tcp.readUInt16BE(2), 4000);
      assert.equal(tcp.readUInt32BE(4), 0xfffffffe);
      assert.equal(tcp.readUInt32BE(8), 7);
      assert.equal(tcp[13], TH_FIN | TH_ACK);
      assert.equal(tcp.readUInt16BE(14), 512);
      assert.equal(sums([packet.subarray(12, 20), Buffer.from([0, 6, 0, 20]), tcp]), 0xffff);
    }
  });

  it('with a payload and an urgent pointer: lengths and checksum cover the payload', () => {
    const payload = Buffer.alloc(1001, 0x5a);
    const { packet } = buildPacket({
      from: { address: '127.0.0.2', port: 5000 }, to: { address: '127.0.0.1', port: 4000 }, seq: 9, ack: 7,
      flags: TH_ACK | TH_PSH | TH_URG, window: 512, payload, urgent: 1,
    });
    assert.equal(packet.length, 40 + 1001);
    assert.equal(packet.readUInt16BE(2), 1041);
    const tcp = packet.subarray(20);
    assert.equal(tcp[13], TH_ACK | TH_PSH | TH_URG);
    assert.equal(tcp.readUInt16BE(18), 1);
    assert.deepEqual(tcp.subarray(20), payload);
    assert.equal(sums([packet.subarray(12, 20), Buffer.from([0, 6, 1021 >> 8, 1021 & 0xff]), tcp]), 0xffff);
  });

  it('IPv6: 40-byte header with the payload length, checksum over the IPv6 pseudo-header', () => {
    const { packet, family, dst } = buildPacket({
      from: { address: 'fd00::2', port: 443 }, to: { address: 'fd00::1', port: 40000 }, seq: 1, ack: 2, flags: TH_ACK, window: 99999,
    });
    assert.equal(family, 10);
    assert.equal(dst, 'fd00::1');
    assert.equal(packet.length, 60);
    assert.equal(packet[0]! >> 4, 6);
    assert.equal(packet.readUInt16BE(4), 20);
    assert.equal(packet[6], 6);
    const tcp = packet.subarray(40);
    assert.equal(tcp.readUInt16BE(14), 0xffff, 'the window field is clamped');
    assert.equal(sums([packet.subarray(8, 40), Buffer.from([0, 0, 0, 20, 0, 0, 0, 6]), tcp]), 0xffff);
  });
});
