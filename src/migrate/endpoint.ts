/**
 * Where a migration goes (`ferry migrate --to tcp://HOST:PORT` or `ssh://[USER@]HOST[:PORT]`)
 * and where a target listens (`ferry receive --listen HOST:PORT`). Pure: no I/O, so the
 * argument parser uses it.
 */

/** A container id as runc takes one (its own rule: letters, digits and `_+-.`). */
export const CONTAINER_ID = /^[A-Za-z0-9_+.-]{1,1024}$/;

/** A TCP host and port. */
export interface Endpoint {
  /** A host name, an IPv4 address or an IPv6 address (without brackets). */
  host: string;
  /** 1–65535; 0 only for a listener (the kernel picks a free port). */
  port: number;
}

/** "HOST:PORT", with brackets around an IPv6 address. */
export function formatHostPort(e: Endpoint): string {
  return `${e.host.includes(':') ? `[${e.host}]` : e.host}:${e.port}`;
}

/**
 * A target reached through the system's ssh (src/migrate/ssh.ts): its `ferry receive --stdio`
 * runs there, and ssh authenticates and encrypts.
 */
export interface SshDestination {
  ssh: true;
  /** The login name, if given (else ssh's own choice: its configuration, or the local user). */
  user?: string;
  /** A host name, an IPv4 address or an IPv6 address (without brackets). */
  host: string;
  /** The ssh port, if given (else ssh's: its configuration, or 22). */
  port?: number;
}

/** Where `ferry migrate --to` goes. */
export type Destination = Endpoint | SshDestination;

/** Whether `d` is an ssh:// destination. */
export function isSsh(d: Destination): d is SshDestination {
  return 'ssh' in d;
}

/** "tcp://HOST:PORT" or "ssh://[USER@]HOST[:PORT]". */
export function formatUrl(e: Destination): string {
  if (isSsh(e)) {
    const host = e.host.includes(':') ? `[${e.host}]` : e.host;
    return `ssh://${e.user !== undefined ? `${e.user}@` : ''}${host}${e.port !== undefined ? `:${e.port}` : ''}`;
  }
  return `tcp://${formatHostPort(e)}`;
}

/**
 * Parses "HOST:PORT" ("[::1]:7070" for IPv6); `anyPort` allows port 0. Throws an Error whose
 * message says what is wrong (the caller makes it a usage error).
 */
export function parseHostPort(text: string, anyPort: boolean): Endpoint {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(text);
  if (!m) throw new Error(`"${text}" is not HOST:PORT (an IPv6 address in brackets: [::1]:7070)`);
  const host = m[1] ?? m[2]!;
  const port = Number(m[3]);
  if (port > 65535 || (port === 0 && !anyPort)) throw new Error(`port ${m[3]} of "${text}" is not a TCP port (1-65535${anyPort ? ', or 0 for any free one' : ''})`);
  return { host, port };
}

/**
 * Parses "tcp://HOST:PORT" or "ssh://[USER@]HOST[:PORT]"; other schemes are refused, naming
 * what is supported. The user and host of an ssh:// destination are handed to ssh as
 * arguments: only letters, digits and `._-` (and an IPv6 address in brackets) are allowed, and
 * neither may start with "-", so that ssh cannot take either for an option.
 */
export function parseUrl(text: string): Destination {
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(text)?.[1];
  if (scheme === undefined) throw new Error(`"${text}" is not a URL: write tcp://HOST:PORT or ssh://[USER@]HOST[:PORT]`);
  const rest = text.slice(scheme.length + 3).replace(/\/$/, '');
  if (scheme.toLowerCase() === 'ssh') return parseSsh(rest, text);
  if (scheme.toLowerCase() !== 'tcp') {
    throw new Error(`${scheme}:// is not supported: write tcp://HOST:PORT, where ferry receive listens, or ssh://[USER@]HOST[:PORT]`);
  }
  return parseHostPort(rest, false);
}

/** "[USER@]HOST[:PORT]" of an ssh:// URL. */
function parseSsh(rest: string, text: string): SshDestination {
  const m = /^(?:([A-Za-z0-9._][A-Za-z0-9._-]{0,63})@)?(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9][A-Za-z0-9.-]{0,252}))(?::(\d{1,5}))?$/.exec(rest);
  if (!m) throw new Error(`"${text}" is not ssh://[USER@]HOST[:PORT] (letters, digits and ._- in USER and HOST; an IPv6 address in brackets)`);
  const out: SshDestination = { ssh: true, host: m[2] ?? m[3]! };
  if (m[1] !== undefined) out.user = m[1];
  if (m[4] !== undefined) {
    const port = Number(m[4]);
    if (port < 1 || port > 65535) throw new Error(`port ${m[4]} of "${text}" is not a TCP port (1-65535)`);
    out.port = port;
  }
  return out;
}
