/**
 * The part of CRIU's RPC protocol podman uses before it calls the runtime: `criu swrk FD`
 * gets one request per SOCK_SEQPACKET message on FD and answers each with one message.
 * Podman (through go-criu) asks VERSION before every checkpoint and restore, and
 * FEATURE_CHECK for `--pre-checkpoint` (mem_track). Ferry does not checkpoint through CRIU, so
 * the stand-in answers those two truthfully for ferry — a version high enough for podman, no
 * memory tracking, no lazy pages — and refuses every other request with an error response.
 *
 * Messages (CRIU's rpc.proto, field numbers): criu_req { type 1 (enum), opts 2, notify_success
 * 3, keep_open 4, features 5, pid 6 }; criu_resp { type 1, success 2, dump 3, restore 4,
 * notify 5, ps 6, cr_errno 7, features 8, cr_errmsg 9, version 10, status 11 };
 * criu_features { mem_track 1, lazy_pages 2, pidfd_store 3 }; criu_version { major_number 1,
 * minor_number 2, gitid 3, sublevel 4, extra 5, name 6 }.
 */
import { FERRY_VERSION } from '../version.js';
import { bytesField, decodeMessage, ProtoWriter, uintField, type ProtoFields } from './protobuf.js';

/** criu_req_type. */
export const CriuReqType = {
  EMPTY: 0, DUMP: 1, RESTORE: 2, CHECK: 3, PRE_DUMP: 4, PAGE_SERVER: 5, NOTIFY: 6,
  CPUINFO_DUMP: 7, CPUINFO_CHECK: 8, FEATURE_CHECK: 9, VERSION: 10, WAIT_PID: 11, PAGE_SERVER_CHLD: 12,
} as const;

const TYPE_NAMES = new Map<number, string>(Object.entries(CriuReqType).map(([k, v]) => [v, k]));

/** The name of a request type, or its number. */
export function typeName(type: number): string {
  return TYPE_NAMES.get(type) ?? `type ${type}`;
}

/** criu_features: which were asked (present) and, in an answer, whether they are there. */
export interface CriuFeatures {
  memTrack?: boolean;
  lazyPages?: boolean;
  pidfdStore?: boolean;
}

/** A decoded criu_req (the fields the stand-in reads). */
export interface CriuRequest {
  type: number;
  keepOpen: boolean;
  /** The features asked about (FEATURE_CHECK). */
  features?: CriuFeatures;
  /** Every field as decoded, for the log. */
  fields: ProtoFields;
}

/** A criu_resp to encode. */
export interface CriuResponse {
  type: number;
  success: boolean;
  crErrno?: number;
  crErrmsg?: string;
  features?: CriuFeatures;
  version?: { major: number; minor: number; sublevel?: number; gitid?: string; name?: string };
}

/** The CRIU version the stand-in reports: podman needs 3.11, and 3.16 for pods. */
export const REPORTED_VERSION = { major: 3, minor: 17, sublevel: 0 } as const;

/** Name in the VERSION answer: says who really answers. */
export const STAND_IN_NAME = `ferry ${FERRY_VERSION} (criu RPC stand-in: checkpoints go through ferry-runtime)`;

const EOPNOTSUPP = 95;

function features(f: ProtoFields): CriuFeatures {
  const out: CriuFeatures = {};
  const b = (n: number): boolean | undefined => {
    const v = uintField(f, n);
    return v === undefined ? undefined : v !== 0n;
  };
  const m = b(1);
  const l = b(2);
  const p = b(3);
  if (m !== undefined) out.memTrack = m;
  if (l !== undefined) out.lazyPages = l;
  if (p !== undefined) out.pidfdStore = p;
  return out;
}

function encodeFeatures(f: CriuFeatures): ProtoWriter {
  const w = new ProtoWriter();
  if (f.memTrack !== undefined) w.uint(1, f.memTrack);
  if (f.lazyPages !== undefined) w.uint(2, f.lazyPages);
  if (f.pidfdStore !== undefined) w.uint(3, f.pidfdStore);
  return w;
}

/** Decodes a criu_req; throws ProtoError on a malformed one. */
export function decodeRequest(buf: Buffer): CriuRequest {
  const fields = decodeMessage(buf);
  const type = Number(uintField(fields, 1) ?? 0n);
  const req: CriuRequest = { type, keepOpen: (uintField(fields, 4) ?? 0n) !== 0n, fields };
  const f = bytesField(fields, 5);
  if (f !== undefined) req.features = features(decodeMessage(f));
  return req;
}

/** Encodes a criu_resp. */
export function encodeResponse(r: CriuResponse): Buffer {
  const w = new ProtoWriter().uint(1, r.type).uint(2, r.success);
  if (r.crErrno !== undefined) w.uint(7, r.crErrno);
  if (r.features !== undefined) w.bytes(8, encodeFeatures(r.features));
  if (r.crErrmsg !== undefined) w.bytes(9, r.crErrmsg);
  if (r.version !== undefined) {
    const v = new ProtoWriter().uint(1, r.version.major).uint(2, r.version.minor);
    if (r.version.gitid !== undefined) v.bytes(3, r.version.gitid);
    if (r.version.sublevel !== undefined) v.uint(4, r.version.sublevel);
    if (r.version.name !== undefined) v.bytes(6, r.version.name);
    w.bytes(10, v);
  }
  return w.finish();
}

/** Decodes a criu_resp (tests, and anyone checking the stand-in). */
export function decodeResponse(buf: Buffer): CriuResponse {
  const f = decodeMessage(buf);
  const r: CriuResponse = { type: Number(uintField(f, 1) ?? 0n), success: (uintField(f, 2) ?? 0n) !== 0n };
  const errno = uintField(f, 7);
  if (errno !== undefined) r.crErrno = Number(BigInt.asIntN(32, errno));
  const feat = bytesField(f, 8);
  if (feat !== undefined) r.features = features(decodeMessage(feat));
  const msg = bytesField(f, 9);
  if (msg !== undefined) r.crErrmsg = msg.toString('utf8');
  const ver = bytesField(f, 10);
  if (ver !== undefined) {
    const v = decodeMessage(ver);
    r.version = { major: Number(uintField(v, 1) ?? 0n), minor: Number(uintField(v, 2) ?? 0n) };
    const sub = uintField(v, 4);
    if (sub !== undefined) r.version.sublevel = Number(sub);
    const git = bytesField(v, 3);
    if (git !== undefined) r.version.gitid = git.toString('utf8');
    const name = bytesField(v, 6);
    if (name !== undefined) r.version.name = name.toString('utf8');
  }
  return r;
}

/** The request built by podman's VERSION query, for tests: criu_req { type: VERSION }. */
export function encodeRequest(type: number, feats?: CriuFeatures): Buffer {
  const w = new ProtoWriter().uint(1, type);
  if (feats) w.bytes(5, encodeFeatures(feats));
  return w.finish();
}

/** The stand-in's answer to one request. */
export function answer(req: CriuRequest): CriuResponse {
  switch (req.type) {
    case CriuReqType.VERSION:
      return { type: req.type, success: true, version: { ...REPORTED_VERSION, name: STAND_IN_NAME } };
    case CriuReqType.FEATURE_CHECK: {
      // Only the features asked about are answered, each "not available": ferry has no
      // memory tracking (pre-dump), no lazy pages and no pidfd store.
      const asked = req.features ?? {};
      const out: CriuFeatures = {};
      if (asked.memTrack !== undefined) out.memTrack = false;
      if (asked.lazyPages !== undefined) out.lazyPages = false;
      if (asked.pidfdStore !== undefined) out.pidfdStore = false;
      return { type: req.type, success: true, features: out };
    }
    default:
      return {
        type: req.type,
        success: false,
        crErrno: EOPNOTSUPP,
        crErrmsg: `ferry's criu stand-in answers VERSION and FEATURE_CHECK only, not ${typeName(req.type)}: `
          + 'containers are checkpointed and restored by the runtime wrapper ferry-runtime, not through CRIU',
      };
  }
}
