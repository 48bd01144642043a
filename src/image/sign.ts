/**
 * Signed images (docs/image-format.md, "manifest.sig"): Ed25519 keys, the signature entry,
 * and the trusted keys a restore accepts.
 *
 * The manifest lists every other entry with its exact size and sha256, and the reader refuses
 * an entry that is not listed, so a signature over the manifest's exact bytes covers the whole
 * image. What is signed is a fixed context string and then those bytes
 * (`ferry-image-manifest-v1` NUL manifest), so a signature made for anything else with the
 * same key is never one of an image. Ed25519 (RFC 8032) signatures are deterministic and
 * always 64 bytes, and the entry holding one has a fixed length: the writer knows its size
 * before the manifest's hashes are known.
 *
 * A key is named by its fingerprint, `SHA256:` and the base64 (unpadded, as ssh prints it) of
 * the sha256 of the raw 32-byte public key.
 */
import { createHash, createPrivateKey, createPublicKey, randomBytes, sign, verify, type KeyObject } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { FerryError, describeCause, type ErrorContext } from '../errors.js';

/** The signature entry: the tar member right after manifest.json, in a signed image only. */
export const SIGNATURE_NAME = 'manifest.sig';
/** `format` of the signature entry. */
export const SIGNATURE_FORMAT = 'ferry-signature';
/** `version` of the signature entry. */
export const SIGNATURE_VERSION = 1;
/** What precedes the manifest bytes in the signed message (domain separation). */
const CONTEXT = Buffer.from('ferry-image-manifest-v1\0', 'latin1');
/** Largest signature entry the reader looks at (ferry's own is 286 bytes). */
export const MAX_SIGNATURE_BYTES = 1024;
/** Largest key file read (a PEM Ed25519 key is about 120 bytes). */
const MAX_KEY_FILE = 64 * 1024;
/** Most public keys a trust directory may hold. */
const MAX_TRUSTED = 4096;

/** A signer's identity: `SHA256:` + unpadded base64 of sha256(raw public key). */
export type KeyId = string;

/** DER of an Ed25519 key up to its 32 key bytes: PKCS#8 (private) and SPKI (public), RFC 8410. */
const PKCS8_ED25519 = Buffer.from('302e020100300506032b657004220420', 'hex');
const SPKI_ED25519 = Buffer.from('302a300506032b6570032100', 'hex');

/**
 * A new Ed25519 private key, made from 32 random bytes. Not with generateKeyPairSync: on
 * Node 20 a key-generation job that the garbage collector frees while the same key is being
 * exported can deadlock the process (seen here: ferry keygen hung in a JWK export).
 */
export function newEd25519Key(): KeyObject {
  return createPrivateKey({ key: Buffer.concat([PKCS8_ED25519, randomBytes(32)]), format: 'der', type: 'pkcs8' });
}

/** The 32 bytes of an Ed25519 public key (from a public or a private key). */
export function rawPublicKey(key: KeyObject): Buffer {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  const der = pub.export({ format: 'der', type: 'spki' });
  if (der.length !== SPKI_ED25519.length + 32 || !der.subarray(0, SPKI_ED25519.length).equals(SPKI_ED25519)) {
    throw new FerryError('EKEY', 'not an Ed25519 key');
  }
  return der.subarray(SPKI_ED25519.length);
}

/** The fingerprint of a key (public or private): `SHA256:…`, 43 base64 characters. */
export function fingerprint(key: KeyObject): KeyId {
  return `SHA256:${createHash('sha256').update(rawPublicKey(key)).digest('base64').replace(/=+$/, '')}`;
}

/** A new Ed25519 key pair, its PEM encodings (PKCS#8 private, SPKI public) and fingerprint. */
export function generateSigningKey(): { privatePem: string; publicPem: string; keyId: KeyId } {
  const privateKey = newEd25519Key();
  const publicKey = createPublicKey(privateKey);
  return {
    privatePem: privateKey.export({ format: 'pem', type: 'pkcs8' }) as string,
    publicPem: publicKey.export({ format: 'pem', type: 'spki' }) as string,
    keyId: fingerprint(publicKey),
  };
}

/** Reads a small key file; FerryError 'EKEY' naming it. */
function readKeyFile(path: string, what: string): Buffer {
  try {
    const st = statSync(path);
    if (!st.isFile()) throw new FerryError('EKEY', `${what} ${path} is not a regular file`, { path });
    if (st.size > MAX_KEY_FILE) throw new FerryError('EKEY', `${what} ${path} is ${st.size} bytes: not a key file`, { path });
    return readFileSync(path);
  } catch (err) {
    if (err instanceof FerryError) throw err;
    const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : describeCause(err);
    throw new FerryError('EKEY', `cannot read ${what} ${path}: ${why}`, { cause: err, path });
  }
}

/**
 * The Ed25519 private key to sign images with: a KeyObject as given, or read from a PKCS#8
 * PEM file (as `ferry keygen` writes PREFIX.key). FerryError 'EKEY' for anything else.
 */
export function signingKey(key: string | KeyObject): KeyObject {
  if (typeof key !== 'string') {
    if (key.type !== 'private' || key.asymmetricKeyType !== 'ed25519') {
      throw new FerryError('EKEY', `the sign key is a ${key.asymmetricKeyType ?? 'secret'} ${key.type} key: it must be an Ed25519 private key`);
    }
    return key;
  }
  const pem = readKeyFile(key, 'sign key');
  let k: KeyObject;
  try {
    k = createPrivateKey({ key: pem, format: 'pem' });
  } catch (err) {
    throw new FerryError('EKEY', `sign key ${key} is not a private key in PEM (PKCS#8, unencrypted), as ferry keygen writes PREFIX.key`, { cause: err, path: key });
  }
  if (k.asymmetricKeyType !== 'ed25519') {
    throw new FerryError('EKEY', `sign key ${key} is an ${k.asymmetricKeyType ?? 'unknown'} key: ferry signs with Ed25519 keys (make one with ferry keygen)`, { path: key });
  }
  return k;
}

/** Reads one Ed25519 public key (SPKI PEM, as `ferry keygen` writes PREFIX.pub). */
function publicKeyFile(path: string): KeyObject {
  const pem = readKeyFile(path, 'trusted key');
  // createPublicKey would also take a private key and derive its public half: a private key
  // has no business in a trust list.
  if (!pem.toString('latin1').includes('-----BEGIN PUBLIC KEY-----')) {
    throw new FerryError('EKEY', `trusted key ${path} is not a public key in PEM (SPKI), as ferry keygen writes PREFIX.pub`, { path });
  }
  let k: KeyObject;
  try {
    k = createPublicKey({ key: pem, format: 'pem' });
  } catch (err) {
    throw new FerryError('EKEY', `trusted key ${path} is not a valid public key in PEM (SPKI)`, { cause: err, path });
  }
  if (k.asymmetricKeyType !== 'ed25519') {
    throw new FerryError('EKEY', `trusted key ${path} is an ${k.asymmetricKeyType ?? 'unknown'} key: ferry images are signed with Ed25519 keys`, { path });
  }
  return k;
}

/** The public keys a restore accepts signatures of, and where they came from (for messages). */
export interface TrustedKeys {
  /** What configured them, as the user wrote it: `--trust /etc/ferry/keys`, `image.trust /etc/ferry/keys`. */
  readonly label: string;
  /** Fingerprint -> key. */
  readonly keys: ReadonlyMap<KeyId, KeyObject>;
}

/**
 * Loads trusted keys: a file (one SPKI PEM public key), a directory (every `*.pub` in it, at
 * least one) or KeyObjects. `how` names the setting in messages (`--trust`, `image.trust`).
 * FerryError 'EKEY' naming the file for anything unreadable or not an Ed25519 public key.
 */
export function loadTrust(source: string | readonly KeyObject[], how: string): TrustedKeys {
  const keys = new Map<KeyId, KeyObject>();
  if (typeof source !== 'string') {
    for (const k of source) {
      if (k.type !== 'public' || k.asymmetricKeyType !== 'ed25519') throw new FerryError('EKEY', `${how}: every trusted key must be an Ed25519 public key`);
      keys.set(fingerprint(k), k);
    }
    if (keys.size === 0) throw new FerryError('EKEY', `${how}: no trusted key given`);
    return { label: how, keys };
  }
  const label = `${how} ${source}`;
  let isDir: boolean;
  try {
    isDir = statSync(source).isDirectory();
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file or directory' : describeCause(err);
    throw new FerryError('EKEY', `${label}: cannot read it: ${why}`, { cause: err, path: source });
  }
  if (!isDir) {
    const k = publicKeyFile(source);
    keys.set(fingerprint(k), k);
    return { label, keys };
  }
  const names = readdirSync(source).filter((n) => n.endsWith('.pub')).sort();
  if (names.length === 0) throw new FerryError('EKEY', `${label}: the directory holds no .pub file, so no image could be trusted`, { path: source });
  if (names.length > MAX_TRUSTED) throw new FerryError('EKEY', `${label}: the directory holds ${names.length} .pub files, more than the ${MAX_TRUSTED} allowed`, { path: source });
  for (const n of names) {
    const k = publicKeyFile(join(source, n));
    keys.set(fingerprint(k), k);
  }
  return { label, keys };
}

/**
 * The trusted keys of a restore: `option` (the library option, `--trust` on the command
 * line) wins over `configured` (`image.trust` of the configuration, '' = none); undefined
 * when neither is set.
 */
export function restoreTrust(option: string | readonly KeyObject[] | undefined, configured: string): TrustedKeys | undefined {
  if (option !== undefined) return loadTrust(option, typeof option === 'string' ? '--trust' : 'the trusted keys given');
  return configured !== '' ? loadTrust(configured, 'image.trust') : undefined;
}

/** The message an Ed25519 signature of an image is made over. */
const signedMessage = (manifest: Buffer): Buffer => Buffer.concat([CONTEXT, manifest]);

/**
 * The signature entry: one line of JSON whose fields all have a fixed length, so its size is
 * known before the manifest is final.
 */
function encode(keyId: KeyId, pub: Buffer, signature: Buffer): Buffer {
  return Buffer.from(`${JSON.stringify({
    format: SIGNATURE_FORMAT, version: SIGNATURE_VERSION, algorithm: 'ed25519', keyId,
    publicKey: pub.toString('base64'), signature: signature.toString('base64'),
  })}\n`);
}

/** Signs manifests with one key; `placeholder` has the length of every signature entry it makes. */
export interface ImageSigner {
  readonly keyId: KeyId;
  /** A signature entry of the final length (the signature all zeros), written first when the manifest is rewritten later. */
  readonly placeholder: Buffer;
  /** The signature entry for these exact manifest bytes. */
  sign(manifest: Buffer): Buffer;
}

/** A signer for `key` (an Ed25519 private KeyObject, see signingKey()). */
export function imageSigner(key: KeyObject): ImageSigner {
  const pub = rawPublicKey(key);
  const keyId = fingerprint(key);
  const placeholder = encode(keyId, pub, Buffer.alloc(64));
  return {
    keyId,
    placeholder,
    sign(manifest) {
      const out = encode(keyId, pub, sign(null, signedMessage(manifest), key));
      if (out.length !== placeholder.length) throw new Error('signature entry length changed');
      return out;
    },
  };
}

/** A parsed signature entry. */
export interface ImageSignature {
  keyId: KeyId;
  publicKey: KeyObject;
  signature: Buffer;
}

const B64 = /^[A-Za-z0-9+/]*={0,2}$/;

/**
 * Parses a signature entry strictly (every field, its type and length); FerryError 'EIMAGE'
 * "image X is corrupt: …" otherwise.
 */
export function parseSignature(buf: Buffer, label: string, where: ErrorContext): ImageSignature {
  const bad = (what: string): never => {
    throw new FerryError('EIMAGE', `image ${label} is corrupt: its ${SIGNATURE_NAME} ${what}`, where);
  };
  if (buf.length > MAX_SIGNATURE_BYTES) bad(`is ${buf.length} bytes, over the ${MAX_SIGNATURE_BYTES} limit`);
  let v: unknown;
  try {
    v = JSON.parse(buf.toString('utf8'));
  } catch {
    return bad('is not valid JSON');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return bad('is not an object');
  const o = v as Record<string, unknown>;
  if (o.format !== SIGNATURE_FORMAT) bad(`has format ${JSON.stringify(String(o.format).slice(0, 40))}, not "${SIGNATURE_FORMAT}"`);
  if (o.version !== SIGNATURE_VERSION) bad(`has version ${String(o.version).slice(0, 20)}; this ferry reads version ${SIGNATURE_VERSION}`);
  if (o.algorithm !== 'ed25519') bad(`has algorithm ${JSON.stringify(String(o.algorithm).slice(0, 40))}; this ferry verifies ed25519`);
  const { keyId, publicKey, signature } = o;
  if (typeof publicKey !== 'string' || !B64.test(publicKey) || Buffer.from(publicKey, 'base64').length !== 32) bad('has no valid publicKey (32 bytes, base64)');
  if (typeof signature !== 'string' || !B64.test(signature) || Buffer.from(signature, 'base64').length !== 64) bad('has no valid signature (64 bytes, base64)');
  let key: KeyObject;
  try {
    key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(publicKey as string, 'base64').toString('base64url') }, format: 'jwk' });
  } catch {
    return bad('has a publicKey that is not an Ed25519 key');
  }
  const id = fingerprint(key);
  if (keyId !== id) bad(`names key ${JSON.stringify(String(keyId).slice(0, 60))}, but its publicKey is ${id}`);
  return { keyId: id, publicKey: key, signature: Buffer.from(signature as string, 'base64') };
}

/** Ed25519's base point, encoded: a valid public key that signs nothing of ours (warmUpVerify). */
const BASE_POINT = Buffer.from('58' + '66'.repeat(31), 'hex').toString('base64url');

/**
 * Does a signature check's first-time work ahead, on a throwaway key: the key's import, its
 * fingerprint and one verification cost 1.5-2 ms the first time in a process (OpenSSL sets
 * Ed25519 up), 0.5 after. A migration target does it at the hello, out of the downtime.
 */
export function warmUpVerify(): void {
  const key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: BASE_POINT }, format: 'jwk' });
  fingerprint(key);
  verify(null, Buffer.alloc(1), key, Buffer.alloc(64));
}

/**
 * Checks the signature of an image before anything else of it is used: `manifest` its exact
 * bytes, `sig` its signature entry (undefined: unsigned). With `trust`, an unsigned image or
 * one signed by another key is refused (FerryError 'EUNTRUSTED'); a signature present is
 * always verified (FerryError 'EIMAGE' when it does not match). Returns the signer, or null.
 */
export function checkSignature(manifest: Buffer, sig: Buffer | undefined, trust: TrustedKeys | undefined,
  label: string, where: ErrorContext): KeyId | null {
  if (sig === undefined) {
    if (trust) throw new FerryError('EUNTRUSTED', `image ${label} is not signed, and ${trust.label} requires a signature`, where);
    return null;
  }
  const s = parseSignature(sig, label, where);
  let key = s.publicKey;
  if (trust) {
    const trusted = trust.keys.get(s.keyId);
    if (trusted === undefined) throw new FerryError('EUNTRUSTED', `image ${label} is signed by ${s.keyId}, which is not trusted (${trust.label})`, where);
    key = trusted;
  }
  if (!verify(null, signedMessage(manifest), key, s.signature)) {
    throw new FerryError('EIMAGE', `image ${label} is corrupt: its signature by ${s.keyId} does not match its manifest (changed after it was signed)`, where);
  }
  return s.keyId;
}
