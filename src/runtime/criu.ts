/**
 * Ferry's `criu` (run through bin/criu): runc (`runc checkpoint`, `runc restore`) and podman
 * run `criu swrk FD` from PATH and send CRIU RPC requests over the SOCK_SEQPACKET socket FD.
 * VERSION and FEATURE_CHECK are answered by criu-rpc.ts; DUMP, PRE_DUMP and RESTORE are done
 * with ferry's engine by criu-swrk.ts (loaded only for them); anything else is refused with an
 * error response. With bin/criu first in PATH as `criu`, an unmodified runc checkpoints and
 * restores containers through ferry; docs/runtime.md.
 *
 * `FERRY_CRIU_LOG=FILE` appends one JSON line per request and answer to FILE.
 */
import { unwindAll } from '../session.js';
import { appendFileSync, closeSync, readSync, writeSync } from 'node:fs';
import { loadConfig } from '../config/config.js';
import { native } from '../native/binding.js';
import { describeCause, errnoCode, FerryError } from '../errors.js';
import { FERRY_VERSION } from '../version.js';
import { setPauseAt } from '../fault.js';
import { guardSignals } from '../signals.js';
import { errorLine } from './error-line.js';
import { decodeOpts, optionName } from './criu-opts.js';
import type { Channel } from './criu-swrk.js';
import {
  answer, CriuReqType, decodeRequest, encodeResponse, EOPNOTSUPP, REPORTED_VERSION, typeName, type CriuRequest, type CriuResponse,
} from './criu-rpc.js';
import { ProtoError } from './protobuf.js';
import { isEntryPoint } from '../entry.js';

const NAME = 'criu (ferry)';
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

/** Whatever DUMP and RESTORE need beyond the socket (main() fills it in). */
export interface ServeOptions {
  log?: (record: object) => void;
  /** Aborts a DUMP or RESTORE (SIGINT/SIGTERM, src/signals.ts). */
  signal?: AbortSignal;
}

/** cr_errno for a failure: EOPNOTSUPP for a refusal, EINTR when interrupted, else EIO. */
function crErrno(err: unknown): number {
  if (err instanceof FerryError) {
    if (err.code === 'EUNSUPPORTED') return EOPNOTSUPP;
    if (err.code === 'EINTR') return 4;
  }
  return 5;
}

/** Serves requests on `fd` until the other end closes it. Returns the exit status. */
export async function serve(fd: number, opts: ServeOptions = {}): Promise<number> {
  const log = opts.log ?? ((): void => {});
  const buf = Buffer.alloc(MAX_MESSAGE);
  let status = 0;
  const channel = {
    send: (r: CriuResponse, fds?: readonly number[]): void => {
      log({ send: r, ...(fds?.length ? { fds: fds.length } : {}) });
      if (fds?.length) native().unixSend(fd, encodeResponse(r), null, fds);
      else writeSync(fd, encodeResponse(r));
    },
    receive: (): CriuRequest | null => {
      const msg = receive(fd, buf);
      if (msg === null) return null;
      const req = decodeRequest(msg);
      log({ request: typeName(req.type), notifySuccess: req.notifySuccess });
      return req;
    },
  };
  for (;;) {
    const msg = receive(fd, buf);
    if (msg === null) break;
    let req: CriuRequest;
    try {
      req = decodeRequest(msg);
    } catch (err) {
      if (!(err instanceof ProtoError)) throw err;
      log({ malformed: err.message, bytes: msg.toString('hex') });
      status = 1;
      writeSync(fd, encodeResponse({ type: 0, success: false, crErrno: 22, crErrmsg: `malformed request: ${err.message}` }));
      continue;
    }
    let reply: CriuResponse;
    if (req.type === CriuReqType.DUMP || req.type === CriuReqType.PRE_DUMP || req.type === CriuReqType.RESTORE) {
      reply = await work(fd, req, channel, opts, log);
    } else {
      reply = answer(req);
      log({ request: typeName(req.type), keepOpen: req.keepOpen, features: req.features, fields: [...req.fields.keys()], reply });
    }
    if (!reply.success) status = 1;
    writeSync(fd, encodeResponse(reply));
  }
  closeSync(fd);
  return status;
}

/** DUMP, PRE_DUMP or RESTORE with ferry's engine; a failure is an error response with ferry's line. */
async function work(fd: number, req: CriuRequest, channel: Channel, opts: ServeOptions, log: (record: object) => void): Promise<CriuResponse> {
  const verb = req.type === CriuReqType.DUMP ? 'checkpoint' : req.type === CriuReqType.PRE_DUMP ? 'pre-dump' : 'restore';
  let peer: number | undefined;
  let swrk: typeof import('./criu-swrk.js') | undefined;
  try {
    // The engine is loaded only for these two (docs/architecture.md, "Start-up").
    swrk = await import('./criu-swrk.js');
    peer = swrk.peerOf(fd);
    const o = decodeOpts(req.opts ?? Buffer.alloc(0));
    log({ request: typeName(req.type), peer, options: [...o.fields.keys()].map(optionName) });
    const ctx = { channel, peer, config: loadConfig({}), ...(opts.signal !== undefined ? { signal: opts.signal } : {}) };
    if (req.type === CriuReqType.PRE_DUMP) return await swrk.servePreDump(o, ctx);
    return req.type === CriuReqType.DUMP ? await swrk.serveDump(o, ctx) : await swrk.serveRestore(o, ctx);
  } catch (err) {
    const line = errorLine(err, req.type === CriuReqType.RESTORE ? 'restore.log' : 'dump.log');
    log({ request: typeName(req.type), error: line });
    const said = `criu (ferry) ${verb}: ${line}`;
    if (peer === undefined || swrk === undefined || !swrk.tellPeer(peer, said)) {
      try { process.stderr.write(`${said}\n`); } catch { /* nowhere to say it */ }
    }
    return { type: req.type, success: false, crErrno: crErrno(err), crErrmsg: line };
  }
}

const USAGE = `usage: criu swrk FD | criu --version
This is ferry's criu: it serves the CRIU RPC requests that runc sends over
'criu swrk' for 'runc checkpoint' and 'runc restore' (DUMP, PRE_DUMP, RESTORE,
VERSION, FEATURE_CHECK) with ferry's engine; the image is ferry's own, not CRIU's.
See docs/runtime.md in ferry.`;

/** Runs ferry's criu on `argv` (without node and script); returns the exit status. */
export async function main(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
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
    setPauseAt(env.FERRY_TEST_PAUSE_AT); // test-only fault points (src/fault.ts); runc passes its environment on
    const fd = Number(arg);
    if (arg === undefined || !/^\d+$/.test(arg)) {
      process.stderr.write(`${NAME}: swrk needs the descriptor of its socket, got ${arg === undefined ? 'nothing' : `"${arg}"`}\n`);
      return 2;
    }
    // SIGINT/SIGTERM abort a DUMP or RESTORE as they do `ferry checkpoint/restore`.
    const guard = guardSignals(NAME);
    try {
      const status = await serve(fd, { log, signal: guard.signal });
      return guard.exitStatus ?? status;
    } catch (err) {
      log({ error: String(err) });
      process.stderr.write(`${NAME}: swrk on descriptor ${fd}: ${describeCause(err)}\n`);
      return 1;
    } finally {
      guard.dispose();
    }
  }
  log({ refused: verb ?? '' });
  process.stderr.write(`${NAME}: '${verb ?? ''}' is not supported: ferry's criu serves only 'criu swrk FD' (runc's RPC)\n`);
  return 1;
}


/** For the build's code cache (cli/start.cts): compiles the engine's functions (warm-up.ts). */
export { warmUpEngine as warmUp } from '../warm-up.js';

/**
 * Runs ferry's criu as the program: `main` on the process's arguments, then exits with its
 * status. Called below when this module is the one node was started with, and by the
 * code-cached start (cli/start.cts) of bin/criu.
 */
export function entryPoint(): void {
  // Whatever escapes main() (a bug) is still one line, never a stack.
  const fatal = (err: unknown): never => {
    unwindAll(); // let go of whatever a checkpoint or restore holds (src/session.ts)
    process.stderr.write(`${NAME}: ${describeCause(err)}\n`);
    process.exit(1);
  };
  process.on('uncaughtException', fatal);
  process.on('unhandledRejection', fatal);
  main(process.argv.slice(2)).then((status) => process.exit(status), fatal);
}

if (isEntryPoint(import.meta.url)) entryPoint();
