/**
 * `criu` stand-in (run through bin/criu): podman runs `criu swrk FD` from PATH before every
 * checkpoint and restore and asks it for its version (and, for --pre-checkpoint, whether
 * memory tracking works) over the SOCK_SEQPACKET socket FD. Ferry checkpoints through the
 * runtime wrapper, not through CRIU, so this answers those questions (criu-rpc.ts) and
 * nothing else. Installing it as `criu` (a symlink in PATH) lets podman use ferry-runtime on a
 * machine without CRIU; docs/runtime.md.
 *
 * `FERRY_CRIU_LOG=FILE` appends one JSON line per request and answer to FILE.
 */
import { unwindAll } from '../session.js';
import { appendFileSync, closeSync, readSync, writeSync } from 'node:fs';
import { describeCause, errnoCode } from '../errors.js';
import { FERRY_VERSION } from '../version.js';
import { answer, decodeRequest, encodeResponse, REPORTED_VERSION, typeName, type CriuResponse } from './criu-rpc.js';
import { ProtoError } from './protobuf.js';
import { isEntryPoint } from '../entry.js';

const NAME = 'criu (ferry stand-in)';
/** Largest request read; CRIU's own requests fit in a few KiB. */
const MAX_MESSAGE = 1 << 20;

function sleep(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** One SOCK_SEQPACKET message (one read), or null at end of stream. */
function receive(fd: number, buf: Buffer): Buffer | null {
  for (;;) {
    try {
      const n = readSync(fd, buf, 0, buf.length, null);
      return n === 0 ? null : buf.subarray(0, n);
    } catch (err) {
      const code = errnoCode(err);
      if (code === 'EAGAIN') { sleep(5); continue; } // a non-blocking socket: wait for the next message
      if (code === 'EINTR') continue;
      if (code === 'ECONNRESET') return null;
      throw err;
    }
  }
}

/** Serves requests on `fd` until the other end closes it. Returns the exit status. */
export function serve(fd: number, log: (record: object) => void = () => {}): number {
  const buf = Buffer.alloc(MAX_MESSAGE);
  let status = 0;
  for (;;) {
    const msg = receive(fd, buf);
    if (msg === null) break;
    let reply: CriuResponse;
    try {
      const req = decodeRequest(msg);
      reply = answer(req);
      log({ request: typeName(req.type), keepOpen: req.keepOpen, features: req.features, fields: [...req.fields.keys()], reply });
    } catch (err) {
      if (!(err instanceof ProtoError)) throw err;
      reply = { type: 0, success: false, crErrno: 22, crErrmsg: `malformed request: ${err.message}` };
      log({ malformed: err.message, bytes: msg.toString('hex') });
    }
    if (!reply.success) status = 1;
    writeSync(fd, encodeResponse(reply));
  }
  closeSync(fd);
  return status;
}

const USAGE = `usage: criu swrk FD | criu --version
This is ferry's stand-in for CRIU: it answers the version and feature queries container
engines (podman) send over 'criu swrk' before they call the runtime's checkpoint or restore.
The checkpoint itself is done by ferry-runtime (see docs/runtime.md in ferry).`;

/** Runs the stand-in on `argv` (without node and script); returns the exit status. */
export function main(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): number {
  const [verb, arg] = argv;
  const logFile = env.FERRY_CRIU_LOG;
  const log = (record: object): void => {
    if (!logFile) return;
    try {
      appendFileSync(logFile, `${JSON.stringify({ time: new Date().toISOString(), argv, ...record })}\n`);
    } catch { /* the log is best effort */ }
  };
  if (verb === '--version' || verb === '-V') {
    process.stdout.write(`Version: ${REPORTED_VERSION.major}.${REPORTED_VERSION.minor}\n`
      + `${NAME}: ferry ${FERRY_VERSION}, answering as CRIU ${REPORTED_VERSION.major}.${REPORTED_VERSION.minor}\n`);
    return 0;
  }
  if (verb === '--help' || verb === '-h') {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (verb === 'swrk') {
    const fd = Number(arg);
    if (arg === undefined || !/^\d+$/.test(arg)) {
      process.stderr.write(`${NAME}: swrk needs the descriptor of its socket, got ${arg === undefined ? 'nothing' : `"${arg}"`}\n`);
      return 2;
    }
    try {
      return serve(fd, log);
    } catch (err) {
      log({ error: String(err) });
      process.stderr.write(`${NAME}: swrk on descriptor ${fd}: ${describeCause(err)}\n`);
      return 1;
    }
  }
  log({ refused: verb ?? '' });
  process.stderr.write(`${NAME}: '${verb ?? ''}' is not supported: this stand-in only answers 'criu swrk FD' version and feature queries; `
    + 'checkpoints are made by ferry-runtime\n');
  return 1;
}


if (isEntryPoint(import.meta.url)) {
  // Whatever escapes main() (a bug) is still one line, never a stack.
  const fatal = (err: unknown): never => {
    unwindAll(); // let go of whatever a checkpoint or restore holds (src/session.ts)
    process.stderr.write(`${NAME}: ${describeCause(err)}\n`);
    process.exit(1);
  };
  process.on('uncaughtException', fatal);
  try {
    process.exit(main(process.argv.slice(2)));
  } catch (err) {
    fatal(err);
  }
}
