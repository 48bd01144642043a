/**
 * CRIU's RPC messages as runc, crun and podman send them to `criu swrk FD`: one request per
 * SOCK_SEQPACKET message on FD, each answered with one message. VERSION and FEATURE_CHECK are
 * answered here, truthfully for ferry (a version high enough for podman and runc, no memory
 * tracking, no lazy pages); DUMP and RESTORE are done by criu-swrk.ts with ferry's engine,
 * their options read by criu-opts.ts; every other request is refused with an error response.
 * While a DUMP or RESTORE runs, criu sends NOTIFY responses (criu_notify) and the caller
 * answers each with a NOTIFY request carrying notify_success.
 *
 * Messages (CRIU's rpc.proto, field numbers): criu_req { type 1 (enum), opts 2, notify_success
 * 3, keep_open 4, features 5, pid 6 }; criu_resp { type 1, success 2, dump 3, restore 4,
 * notify 5, ps 6, cr_errno 7, features 8, cr_errmsg 9, version 10, status 11 };
 * criu_features { mem_track 1, lazy_pages 2, pidfd_store 3 }; criu_version { major_number 1,
 * minor_number 2, gitid 3, sublevel 4, extra 5, name 6 }; criu_dump_resp { restored 1 };
 * criu_restore_resp { pid 1 }; criu_notify { script 1, pid 2 }.
 */
import { FERRY_VERSION } from '../version.js';
import { bytesField, decodeMessage, int32, ProtoWriter, uintField, type ProtoFields } from './protobuf.js';

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
  /** notify_success (3): the caller's answer to a notification. */
  notifySuccess: boolean;
  /** opts (2), undecoded: criu-opts.ts reads it. */
  opts?: Buffer;
  /** The features asked about (FEATURE_CHECK). */
  features?: CriuFeatures;
  /** Every field as decoded, for the log. */
  fields: ProtoFields;
}

/** A criu_resp to encode. */
export interface CriuResponse {
  type: number;
  success: boolean;
  /** criu_dump_resp (field 3): `restored` 1 (false: this was a dump). */
  dump?: { restored: boolean };
  /** criu_restore_resp (field 4): the restored root's pid 1 (required). */
  restore?: { pid: number };
  /** criu_notify (field 5): the action (script 1) and a pid (2) where it has one. */
  notify?: { script: string; pid?: number };
  crErrno?: number;
  crErrmsg?: string;
  features?: CriuFeatures;
  version?: { major: number; minor: number; sublevel?: number; gitid?: string; name?: string };
}

/** The CRIU version the stand-in reports: podman needs 3.11, and 3.16 for pods. */
export const REPORTED_VERSION = { major: 3, minor: 17, sublevel: 0 } as const;

/** Name in the VERSION answer: says who really answers. */
export const STAND_IN_NAME = `ferry ${FERRY_VERSION} (criu RPC: DUMP and RESTORE done by ferry's engine)`;

/** errno of an unsupported request or option (cr_errno). */
export const EOPNOTSUPP = 95;

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
  const req: CriuRequest = {
    type, keepOpen: (uintField(fields, 4) ?? 0n) !== 0n, notifySuccess: (uintField(fields, 3) ?? 0n) !== 0n, fields,
  };
  const opts = bytesField(fields, 2);
  if (opts !== undefined) req.opts = opts;
  const f = bytesField(fields, 5);
  if (f !== undefined) req.features = features(decodeMessage(f));
  return req;
}

/** Encodes a criu_resp. */
export function encodeResponse(r: CriuResponse): Buffer {
  const w = new ProtoWriter().uint(1, r.type).uint(2, r.success);
  if (r.dump !== undefined) w.bytes(3, new ProtoWriter().uint(1, r.dump.restored));
  if (r.restore !== undefined) w.bytes(4, new ProtoWriter().uint(1, r.restore.pid));
  if (r.notify !== undefined) {
    const n = new ProtoWriter().bytes(1, r.notify.script);
    if (r.notify.pid !== undefined) n.uint(2, r.notify.pid);
    w.bytes(5, n);
  }
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
  const dump = bytesField(f, 3);
  if (dump !== undefined) r.dump = { restored: (uintField(decodeMessage(dump), 1) ?? 0n) !== 0n };
  const rst = bytesField(f, 4);
  if (rst !== undefined) r.restore = { pid: int32(uintField(decodeMessage(rst), 1) ?? 0n) };
  const notify = bytesField(f, 5);
  if (notify !== undefined) {
    const m = decodeMessage(notify);
    r.notify = { script: bytesField(m, 1)?.toString('utf8') ?? '' };
    const pid = uintField(m, 2);
    if (pid !== undefined) r.notify.pid = int32(pid);
  }
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
      // Only the features asked about are answered: memory tracking (pre-dump) with
      // userfaultfd (criu-track.ts; a kernel without WP_ASYNC refuses the PRE_DUMP itself), no
      // lazy pages and no pidfd store.
      const asked = req.features ?? {};
      const out: CriuFeatures = {};
      if (asked.memTrack !== undefined) out.memTrack = true;
      if (asked.lazyPages !== undefined) out.lazyPages = false;
      if (asked.pidfdStore !== undefined) out.pidfdStore = false;
      return { type: req.type, success: true, features: out };
    }
    default:
      return {
        type: req.type,
        success: false,
        crErrno: EOPNOTSUPP,
        crErrmsg: `${typeName(req.type)} is not supported by ferry's criu (it serves DUMP, PRE_DUMP, RESTORE, VERSION and FEATURE_CHECK); nothing was done`,
      };
  }
}
