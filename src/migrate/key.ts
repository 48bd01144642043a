/**
 * The pre-shared key of a migration (`--key FILE` of `ferry migrate` and `ferry receive`):
 * the one secret both nodes hold, which authenticates each to the other and keys the TLS
 * channel between them (channel.ts, docs/migration.md).
 *
 * The file holds at least 32 random bytes, raw or as hex (`openssl rand -hex 32`). Whoever
 * reads it can impersonate either side, so it is treated like an ssh private key: a regular
 * file (not followed through a symbolic link) owned by the user ferry runs as, with no access
 * at all for group or others, else it is refused before anything is touched.
 */
import { createHmac } from 'node:crypto';
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { FerryError, describeCause } from '../errors.js';

/** The fewest secret bytes a key file may hold (256 bits). */
export const MIN_KEY_BYTES = 32;
/** The most a key file may hold: anything longer is not a key file. */
const MAX_KEY_FILE_BYTES = 4096;
/** Context of the derivation of the TLS PSK from the file's secret. */
const PSK_CONTEXT = 'ferry migrate psk v1';

/**
 * A migration key, read and checked: `psk` is what TLS uses (HMAC-SHA256 of a fixed context
 * under the file's secret, 32 bytes whatever the file's length).
 */
export interface MigrationKey {
  /** The file it came from, for messages. */
  readonly path: string;
  /** The TLS pre-shared key. */
  readonly psk: Buffer;
}

/**
 * Reads `path` as a migration key; FerryError 'EKEY' naming the file and what to do when it
 * cannot be one (missing, a symlink, not root-only, too short).
 */
export function readMigrationKey(path: string): MigrationKey {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NOCTTY | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file (make one: umask 077; openssl rand -hex 32 > FILE)'
      : code === 'ELOOP' ? 'it is a symbolic link, which a key file may not be: name the file itself'
        : describeCause(err);
    throw new FerryError('EKEY', `key file ${path}: ${why}`, { cause: err, path });
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new FerryError('EKEY', `key file ${path} is not a regular file`, { path });
    const euid = process.geteuid?.() ?? 0;
    if (st.uid !== euid) {
      throw new FerryError('EKEY', `key file ${path} belongs to uid ${st.uid}, not to uid ${euid} that ferry runs as: chown it`, { path });
    }
    if ((st.mode & 0o077) !== 0) {
      const mode = (st.mode & 0o777).toString(8).padStart(4, '0');
      throw new FerryError('EKEY', `key file ${path} is accessible by others (mode ${mode}): chmod 600 ${path}`, { path });
    }
    if (st.size > MAX_KEY_FILE_BYTES) throw new FerryError('EKEY', `key file ${path} is ${st.size} bytes, more than a key (${MIN_KEY_BYTES} to ${MAX_KEY_FILE_BYTES} bytes)`, { path });
    const buf = Buffer.alloc(st.size);
    for (let off = 0; off < buf.length;) {
      const n = readSync(fd, buf, off, buf.length - off, off);
      if (n === 0) break;
      off += n;
    }
    return { path, psk: derivePsk(keySecret(buf, path)) };
  } finally {
    closeSync(fd);
  }
}

/**
 * The secret of a key file's bytes: text of hex digits only (whitespace around it allowed) is
 * decoded, anything else is taken raw. Either way at least MIN_KEY_BYTES bytes.
 */
export function keySecret(buf: Buffer, path: string): Buffer {
  const text = buf.toString('latin1').trim();
  if (text !== '' && /^[0-9a-fA-F\s]+$/.test(text)) {
    const hex = text.replace(/\s+/g, '');
    if (hex.length % 2 !== 0) throw new FerryError('EKEY', `key file ${path} holds an odd number of hex digits (${hex.length})`, { path });
    if (hex.length < 2 * MIN_KEY_BYTES) {
      throw new FerryError('EKEY', `key file ${path} holds ${hex.length / 2} bytes in hex, fewer than ${MIN_KEY_BYTES}: make a longer one (openssl rand -hex 32)`, { path });
    }
    return Buffer.from(hex, 'hex');
  }
  if (buf.length < MIN_KEY_BYTES) {
    throw new FerryError('EKEY', `key file ${path} holds ${buf.length} bytes, fewer than ${MIN_KEY_BYTES}: make a longer one (openssl rand -hex 32)`, { path });
  }
  return buf;
}

/** The TLS PSK of a secret. */
export function derivePsk(secret: Buffer): Buffer {
  return createHmac('sha256', secret).update(PSK_CONTEXT).digest();
}
