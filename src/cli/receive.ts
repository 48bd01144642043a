/**
 * `ferry receive`: typed options -> library receive. Prints where it listens, then one
 * sentence (or one JSON record per phase) per migration; a failed migration is one line on
 * stderr (and its JSON error object with --json), and the receiver goes on, unless --once.
 *
 * `--stdio`: one migration on standard input and output, which the sender's ssh connects
 * (src/migrate/ssh.ts); standard output is the protocol's then, so sentences and JSON records
 * go to standard error.
 */
import { Socket } from 'node:net';
import { Channel } from '../migrate/channel.js';
import { PipeTransport } from '../migrate/pipes.js';
import { receive, receiveOne } from '../migrate/receiver.js';
import { readMigrationKey } from '../migrate/key.js';
import { formatHostPort } from '../migrate/endpoint.js';
import { UsageError, type ReceiveCliOptions } from './args.js';
import type { RunContext } from './context.js';
import { FerryError, INTERNAL_CODE, internalName, type ErrorContext } from '../errors.js';
import { errorObject, formatMs, printLine, resultJson } from './output.js';
import type { PhaseRecord } from '../migrate/workdir.js';

/** Takes migrations on `o.listen` until a signal (or after one, with --once). */
export async function runReceive(o: ReceiveCliOptions, ctx: RunContext, signal?: AbortSignal): Promise<void> {
  // An image from another node is untrusted input: the receiver must be told whose images keep
  // their credentials (--trust, image.trust), or how far any may go (--max-creds).
  if (o.trust === undefined && ctx.config.image.trust === '' && o.maxCreds === undefined) {
    throw new UsageError('receive', 'needs --trust KEYS (the public keys of the senders\' --sign-key) or --max-creds USER '
      + '(the most a migrated process may get): the key file authenticates the sender, not its images');
  }
  const out = o.stdio ? 2 : 1;
  const onPhase = (r: PhaseRecord): void => {
    if (o.json) return printLine(out, resultJson(r));
    if (r.phase === 'listen') printLine(out, `listening on ${formatHostPort({ host: String(r['host']), port: r['port'] as number })}`);
    if (r.phase === 'done') {
      const down = typeof r['downtimeMs'] === 'number' ? `, downtime ${formatMs(r['downtimeMs'])}` : '';
      printLine(out, `restored pid ${String(r['pid'])} from ${String(r['peer'])}${down}`);
    }
  };
  const common = {
    config: ctx.config, logger: ctx.logger, onPhase,
    ...(o.trust !== undefined ? { trust: o.trust } : {}),
    ...(o.maxCreds !== undefined ? { bound: o.maxCreds } : {}),
    ...(o.runtime !== undefined ? { runtime: o.runtime } : {}),
    ...(signal !== undefined ? { signal } : {}),
  };
  if (o.stdio) return receiveOne(common, stdioChannel());
  const key = readMigrationKey(o.key!);
  await receive({
    ...common, listen: o.listen!, key, once: o.once,
    onFailure: (err) => {
      const r = failure(err, ctx);
      printLine(2, `ferry receive: ${r.message}`);
      if (o.json) printLine(1, JSON.stringify(errorObject(r.code, r.message, r.context)));
    },
    onRefused: (peer, why) => printLine(2, `ferry receive: refused ${peer}: it does not hold the key, or does not speak ferry's TLS (${why})`),
  });
}

/**
 * The channel on this process's standard input and output. The sender is named by the
 * address sshd puts in SSH_CLIENT, when there is one.
 */
function stdioChannel(): Channel {
  let input: Socket;
  let output: Socket;
  try {
    input = new Socket({ fd: 0, readable: true, writable: false });
    output = new Socket({ fd: 1, readable: false, writable: true });
  } catch (err) {
    throw new FerryError('EUSAGE', 'receive --stdio needs its standard input and output to be pipes or sockets: it is run by the sender\'s ssh (ferry migrate --to ssh://…)', { cause: err });
  }
  const from = /^(\S+) \d+ \d+$/.exec(process.env['SSH_CLIENT'] ?? '')?.[1];
  return new Channel(new PipeTransport(input, output), `the sender ${from !== undefined ? `${from} (ssh)` : 'on standard input'}`);
}

/**
 * The line and JSON fields of a failed migration the receiver survives, as main.ts reports a
 * command's error (not imported from there: the bundle would split main.ts into a chunk).
 */
function failure(err: unknown, ctx: RunContext): { code: string; message: string; context: ErrorContext } {
  if (err instanceof FerryError) {
    const context: ErrorContext = {};
    if (err.pid !== undefined) context.pid = err.pid;
    if (err.fd !== undefined) context.fd = err.fd;
    if (err.path !== undefined) context.path = err.path;
    return { code: err.code, message: err.message.replace(/\s*\n\s*/g, ' '), context };
  }
  const where = ctx.logFile !== '' ? `details are in ${ctx.logFile}` : 'run it again with --log-file FILE for the details, and report it';
  return { code: INTERNAL_CODE, message: `internal error (${internalName(err)}) while receiving a migration; this is a bug in ferry: ${where}`, context: {} };
}
