/**
 * --tcp-close (CRIU's flag of the same name): TCP connections are not restored; the program
 * finds each of their descriptors as a TCP socket whose connection has ended, as if the peer
 * had closed it and the program had shut its side down: read(2) returns 0 (end of file),
 * write(2) fails with EPIPE (and raises SIGPIPE, as any write to a closed connection does).
 *
 * A socket in that state cannot be made directly: a fresh socket answers ENOTCONN to a read.
 * tcp_recvmsg returns 0 on a closed socket only when it has seen its peer's FIN (SOCK_DONE,
 * set by tcp_fin), and tcp_sendmsg fails with EPIPE once the socket's own side is shut down
 * (SEND_SHUTDOWN). So the controller makes a throwaway loopback connection and closes it
 * both ways: the accepted end shuts down its sending side (FIN: the connection's socket is in
 * CLOSE_WAIT with SOCK_DONE), then the connection's socket does (FIN: LAST_ACK, then CLOSE once
 * acknowledged, tcp_done). The connection is made from a socket of the record's family
 * (an IPv6 socket reaches the IPv4 loopback through the IPv4-mapped address), on 127.0.0.1
 * of the network namespace the restore runs in, with ports the kernel picks.
 */
import { native } from '../native/binding.js';
import type { InetRecord } from './inet.js';
import { AF_INET, AF_INET6, finishFlags, IPPROTO_TCP, SOCK_STREAM, TCP } from './inet-common.js';

const SHUT_WR = 1;
/** tcp_info.tcpi_state of a socket whose connection has ended. */
const TCP_CLOSE = 7;
/** How long the loopback FINs get to be acknowledged (they are, within the syscalls, in practice). */
const SETTLE_MS = 1000;

/** Opens `rec` (an established connection of the image) as a closed TCP socket. */
export function openClosedConnection(rec: InetRecord): number {
  const n = native();
  const loopback = { family: AF_INET, address: '127.0.0.1', port: 0, flowinfo: 0, scopeId: 0 };
  const listener = n.socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
  const v6 = rec.family === 'ipv6';
  let fd = -1;
  try {
    n.sockBind(listener, loopback);
    n.sockListen(listener, 1);
    const port = n.sockName(listener)!.port;
    fd = n.socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, IPPROTO_TCP);
    n.sockConnect(fd, v6 ? { ...loopback, family: AF_INET6, address: '::ffff:127.0.0.1', port } : { ...loopback, port });
    const other = n.unixAccept(listener);
    try {
      n.unixShutdown(other, SHUT_WR);
      n.unixShutdown(fd, SHUT_WR);
      for (const end = Date.now() + SETTLE_MS; state(fd) !== TCP_CLOSE;) {
        if (Date.now() > end) throw new Error(`the throwaway loopback connection did not close within ${SETTLE_MS} ms`);
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
      }
    } finally {
      n.closeFd(other); // its end lingers in TIME_WAIT on a loopback port pair, harmless
    }
    finishFlags(fd, rec);
    const done = fd;
    fd = -1;
    return done;
  } finally {
    n.closeFd(listener);
    if (fd >= 0) n.closeFd(fd);
  }
}

function state(fd: number): number {
  return native().getSockOpt(fd, IPPROTO_TCP, TCP.INFO, 8).readUInt8(0);
}
