/**
 * `ssh://[USER@]HOST[:PORT]` destinations: the sender runs `ferry receive --stdio` on the
 * target through the system's ssh, and speaks the migration protocol (channel.ts) over the ssh
 * child's stdin and stdout (pipes.ts). ssh does the authentication, with whatever the user's
 * ssh uses (its keys, agent, known_hosts, ~/.ssh/config, or the file given with `--ssh-config`);
 * ferry holds no key of its own for it and adds no TLS: ssh authenticates both ends (the host
 * key against known_hosts, the user by key) and encrypts the stream.
 *
 * ssh runs with BatchMode=yes (no password or host-key prompt can block a migration: an
 * unknown host or a refused key fails at once), with server keepalives (a peer gone silent is
 * given up in about 15 s, besides the channel's own idle limit), and with `--` before the host,
 * which endpoint.ts has already limited to letters, digits and `._-`: nothing in the URL can
 * become an ssh option. What runs on the target is the target's business: an authorized_keys
 * `command="ferry receive --stdio …"` restriction replaces the command sent (docs/migration.md).
 *
 * If ferry dies, ssh's stdin reaches EOF, ssh ends the session, and the remote receiver sees
 * its stdin end and removes what it holds: the kernel's closing of descriptors does the
 * clean-up.
 */
import { spawn } from 'node:child_process';
import type { Logger } from 'pino';
import { FerryError, describeCause } from '../errors.js';
import { resolveBinary } from '../container/runtime.js';
import { Channel } from './channel.js';
import { formatUrl, type SshDestination } from './endpoint.js';
import { PipeTransport } from './pipes.js';

/** How much of ssh's stderr is kept for the error line and the log. */
const STDERR_KEEP = 4096;

/** How the sender reaches the target over ssh. */
export interface SshOptions {
  /** An ssh configuration file to use instead of the user's (`ssh -F`). */
  config?: string;
  /** The command run on the target; default `ferry receive --stdio`. */
  command?: readonly string[];
}

/** The ssh argv (after the binary) for `to`. */
export function sshArgs(to: SshDestination, o: SshOptions): string[] {
  return [
    '-T', '-o', 'BatchMode=yes', '-o', 'ServerAliveInterval=5', '-o', 'ServerAliveCountMax=3',
    ...(o.config !== undefined ? ['-F', o.config] : []),
    ...(to.port !== undefined ? ['-p', String(to.port)] : []),
    ...(to.user !== undefined ? ['-l', to.user] : []),
    '--', to.host, ...(o.command ?? ['ferry', 'receive', '--stdio']),
  ];
}

/**
 * Starts ssh to `to` and returns the channel over it. Nothing is read or sent yet; whether the
 * target took it shows at its welcome. When ssh fails (a refused key, an unknown host, no
 * route, no ferry there), the channel fails with ssh's own last line, `ESSH`.
 */
export function sshChannel(to: SshDestination, o: SshOptions, logger: Logger, signal?: AbortSignal): Channel {
  signal?.throwIfAborted();
  const label = formatUrl(to);
  let ssh: string;
  try {
    ssh = resolveBinary('ssh');
  } catch {
    throw new FerryError('ENOSSH', `${label}: no ssh client here (apt-get install openssh-client)`);
  }
  const child = spawn(ssh, sshArgs(to, o), { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-STDERR_KEEP); });
  let channel: Channel | undefined;
  const exited = new Promise<void>((resolve) => {
    child.on('error', (err) => {
      channel?.fail(new FerryError('ESSH', `${label}: cannot run ${ssh}: ${describeCause(err)}`, { cause: err }));
      resolve();
    });
    child.on('exit', (code, sig) => {
      // ssh's own last word: not the remote receiver's lines or --json records (the channel has those).
      const said = stderr.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('ferry receive:') && !l.startsWith('{')).at(-1);
      logger.debug({ code, signal: sig, stderr }, 'ssh exited');
      if (code !== 0 && channel !== undefined) {
        const status = sig !== null ? `killed by ${sig}` : `exit status ${code}`;
        const hint = code === 127 ? ': is ferry installed and on the PATH there?' : '';
        channel.fail(new FerryError('ESSH', `ssh to ${label} failed (${status}${said !== undefined ? `: ${said}` : ''})${hint}`));
      }
      resolve();
    });
  });
  channel = new Channel(new PipeTransport(child.stdout, child.stdin, exited), label);
  return channel;
}
