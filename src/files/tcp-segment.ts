/**
 * A TCP segment as the peer of a connection would send it, delivered to our own socket: how a
 * restored connection learns that the peer's FIN arrived, or that the peer acknowledged ours.
 *
 * Why a crafted segment: tcp(7) repair mode sets sequence numbers and queues, and shutdown(2)
 * in repair mode queues our own FIN as already sent, but nothing marks a FIN as received
 * (there is no option for sk_shutdown's RCV_SHUTDOWN with rcv_nxt past the FIN, SOCK_DONE and
 * the CLOSE_WAIT/CLOSING/LAST_ACK transitions; tcp_fin() alone does all of it), and nothing
 * but an ACK moves FIN_WAIT1 to FIN_WAIT2. So the segment the peer really sent is sent again:
 * from a raw socket (raw(7) IPPROTO_RAW: IP_HDRINCL, we write the IP header, so the source is
 * the peer's address) to our own address. A packet to a local address goes out on loopback
 * and comes straight back in with its route already set (no reverse-path check), and
 * tcp_v4_rcv/tcp_v6_rcv find the socket by its 4-tuple, in repair mode too.
 *
 * The segment carries exactly the sequence number the socket expects (rcv_nxt), an ACK of
 * snd_una (acknowledges nothing new) or of our FIN, and no TCP options: without a timestamp
 * option PAWS is not checked and ts_recent stays as it is (a made-up TSval could make the
 * socket drop the peer's real segments as old). The window field is the socket's send window
 * (scaled down by the peer's window scale) so that it changes nothing; TCP_REPAIR_WINDOW is
 * set after anyway. The socket answers with an ACK of its own, even in repair mode: the peer
 * must exist by then (the tree's sockets are all built first), or its kernel answers RST.
 */
import { SO, SOL_SOCKET } from '../arch/x86-64.js';
import { FerryError } from '../errors.js';
import { native } from '../native/binding.js';
import { AF_INET, AF_INET6, ipKey, type Endpoint } from './inet-common.js';
import { FERRY_MARK } from './tcp-lock.js';

const SOCK_DGRAM = 2, SOCK_RAW = 3, IPPROTO_RAW = 255, IPPROTO_TCP = 6;
export const TH_FIN = 0x01, TH_PSH = 0x08, TH_ACK = 0x10, TH_URG = 0x20;

export interface Segment {
  /** The peer's address and port (source) and ours (destination). */
  from: Endpoint;
  to: Endpoint;
  seq: number;
  ack: number;
  flags: number;
  /** Window field (already scaled down). */
  window: number;
  /** Bytes the segment carries (none when absent). */
  payload?: Buffer;
  /** Urgent pointer field (with TH_URG); 0 when absent. */
  urgent?: number;
}

/** The 4 bytes of a dotted IPv4 address, or null. */
function v4Bytes(text: string): Buffer | null {
  const k = ipKey(text);
  const m = /^::ffff:(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(k);
  return m ? Buffer.from([Number(m[1]), Number(m[2]), Number(m[3]), Number(m[4])]) : null;
}

/** The 16 bytes of an IPv6 address in text. */
function v6Bytes(text: string): Buffer {
  const words = ipKey(text);
  const b = Buffer.alloc(16);
  if (words.startsWith('::ffff:')) {
    b.writeUInt16BE(0xffff, 10);
    v4Bytes(text)!.copy(b, 12);
    return b;
  }
  words.split(':').forEach((w, i) => b.writeUInt16BE(parseInt(w, 16), i * 2));
  return b;
}

/** RFC 1071 ones' complement sum of `parts`, folded and inverted. */
function checksum(parts: Buffer[]): number {
  let sum = 0;
  const all = Buffer.concat(parts);
  for (let i = 0; i + 1 < all.length; i += 2) sum += all.readUInt16BE(i);
  if (all.length % 2) sum += all[all.length - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** The 20-byte TCP header (no options) and the payload, checksum zero. */
function tcpHeader(s: Segment): Buffer {
  const h = Buffer.alloc(20);
  h.writeUInt16BE(s.from.port, 0);
  h.writeUInt16BE(s.to.port, 2);
  h.writeUInt32BE(s.seq >>> 0, 4);
  h.writeUInt32BE(s.ack >>> 0, 8);
  h.writeUInt8(5 << 4, 12);
  h.writeUInt8(s.flags, 13);
  h.writeUInt16BE(Math.min(0xffff, Math.max(0, s.window)), 14);
  h.writeUInt16BE(s.urgent ?? 0, 18);
  return s.payload?.length ? Buffer.concat([h, s.payload]) : h;
}

/**
 * The whole packet (IP header included) and the address to send it to. A connection of an
 * IPv6 socket between IPv4-mapped addresses runs over IPv4, so it gets an IPv4 packet.
 */
export function buildPacket(s: Segment): { packet: Buffer; family: number; dst: string } {
  const tcp = tcpHeader(s);
  const src4 = v4Bytes(s.from.address), dst4 = v4Bytes(s.to.address);
  if (src4 && dst4) {
    tcp.writeUInt16BE(checksum([src4, dst4, Buffer.from([0, IPPROTO_TCP, tcp.length >> 8, tcp.length & 0xff]), tcp]), 16);
    const ip = Buffer.alloc(20);
    ip.writeUInt8(0x45, 0);
    ip.writeUInt16BE(20 + tcp.length, 2); // filled by the kernel too (raw(7))
    ip.writeUInt16BE(0x4000, 6); // DF
    ip.writeUInt8(64, 8);
    ip.writeUInt8(IPPROTO_TCP, 9);
    src4.copy(ip, 12);
    dst4.copy(ip, 16);
    // The IP header checksum is always filled in by the kernel for IP_HDRINCL.
    return { packet: Buffer.concat([ip, tcp]), family: AF_INET, dst: dst4.join('.') };
  }
  const src6 = v6Bytes(s.from.address), dst6 = v6Bytes(s.to.address);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(tcp.length);
  tcp.writeUInt16BE(checksum([src6, dst6, len, Buffer.from([0, 0, 0, IPPROTO_TCP]), tcp]), 16);
  const ip = Buffer.alloc(40);
  ip.writeUInt32BE(0x60000000, 0);
  ip.writeUInt16BE(tcp.length, 4); // payload length: not filled in for IPv6 (IPV6_HDRINCL)
  ip.writeUInt8(IPPROTO_TCP, 6);
  ip.writeUInt8(64, 7);
  src6.copy(ip, 8);
  dst6.copy(ip, 24);
  return { packet: Buffer.concat([ip, tcp]), family: AF_INET6, dst: s.to.address };
}

/**
 * Whether `e`'s address is one of this host's (in the caller's network namespace): a socket
 * without IP_FREEBIND binds only those (EADDRNOTAVAIL otherwise; ip(7) ip_nonlocal_bind aside).
 */
function isLocal(e: Endpoint): boolean {
  const n = native();
  const v4 = v4Bytes(e.address);
  const family = v4 ? AF_INET : AF_INET6;
  const fd = n.socket(family, SOCK_DGRAM, 0);
  try {
    n.sockBind(fd, { family, address: v4 ? v4.join('.') : e.address, port: 0, flowinfo: 0, scopeId: e.scopeId ?? 0 });
    return true;
  } catch {
    return false;
  } finally {
    n.closeFd(fd);
  }
}

/**
 * Waits until `arrived()` says the segments sent (`what`) were taken: looped-back packets are
 * received in softirq context, normally before sendto(2) returns, later on a loaded machine.
 * After 2 s throws, with `where()` saying how far the socket got (a firewall dropping them, say).
 */
export function awaitSegment(what: string, arrived: () => boolean, where: () => string): void {
  const nap = new Int32Array(new SharedArrayBuffer(4));
  for (const end = Date.now() + 2000; !arrived();) {
    if (Date.now() > end) {
      throw new Error(`${what}, sent to it again from the peer's address, did not arrive: ${where()} (do firewall rules drop looped-back packets?)`);
    }
    Atomics.wait(nap, 0, 0, 2);
  }
}

/**
 * Sends `s` to our own socket (raw(7), IPPROTO_RAW implies IP_HDRINCL for both families).
 * The destination must be an address of this host: the addresses come from the image, and a
 * record with IP_FREEBIND could otherwise have ferry send a forged segment anywhere.
 */
export function sendSegment(s: Segment): void {
  const n = native();
  if (!isLocal(s.to)) {
    throw new FerryError('EIMAGE', `the connection's own address ${s.to.address} is not an address of this host: no segment is sent to it from ${s.from.address}`);
  }
  const { packet, family, dst } = buildPacket(s);
  const fd = n.socket(family, SOCK_RAW, IPPROTO_RAW);
  try {
    // Marked, so that the network lock (tcp-lock.ts) lets restore's own segment through.
    n.setSockInt(fd, SOL_SOCKET, SO.MARK, FERRY_MARK);
    n.sockSend(fd, packet, 0, { family, address: dst, port: 0, flowinfo: 0, scopeId: s.to.scopeId ?? 0 });
  } finally {
    n.closeFd(fd);
  }
}
