/**
 * Where a migration goes (`ferry migrate --to tcp://HOST:PORT`) and where a target listens
 * (`ferry receive --listen HOST:PORT`). Pure: no I/O, so the argument parser uses it.
 */

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

/** "tcp://HOST:PORT". */
export function formatUrl(e: Endpoint): string {
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

/** Parses "tcp://HOST:PORT"; other schemes are refused, naming what is supported. */
export function parseUrl(text: string): Endpoint {
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(text)?.[1];
  if (scheme === undefined) throw new Error(`"${text}" is not a URL: write tcp://HOST:PORT`);
  if (scheme.toLowerCase() !== 'tcp') {
    throw new Error(`${scheme}:// is not supported (yet): write tcp://HOST:PORT, where ferry receive listens`);
  }
  return parseHostPort(text.slice(scheme.length + 3).replace(/\/$/, ''), false);
}
