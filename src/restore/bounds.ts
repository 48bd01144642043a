/**
 * No privilege from the image (docs/security.md): the most a restore may give its tasks.
 *
 * An image is input. Its checksums prove only that the bytes are the ones its manifest names,
 * and anyone who edits an entry can recompute them; restore runs as root and sets whatever
 * credentials task.json holds (restore/creds.ts). So before any process is created, the
 * validated records are held against a `CredsBound`: every uid and gid (real, effective,
 * saved, filesystem), the supplementary groups, the five capability sets, the securebits
 * that must stay set, no_new_privs, seccomp, the hard rlimits, real-time priority and nice,
 * and oom_score_adj of every task and thread. `boundViolations` is pure; `checkBound`
 * throws the first violation as one line.
 *
 * Where a bound comes from:
 * - a container: its bundle's config.json (`boundFromConfig`), the very limits the runtime
 *   would give its processes (process.user, process.capabilities, process.noNewPrivileges,
 *   process.rlimits, process.oomScoreAdj, linux.seccomp);
 * - a plain restore: a policy given by the caller (`parseMaxCreds`: "nobody", "65534:65534",
 *   "www-data,caps=net_bind_service", "root" for anything); without one, none for an image a
 *   trusted key signed (the host key's included), else `untrustedBound`.
 *
 * What a process may legitimately change within a bound is allowed: with CAP_SETUID any uid,
 * with CAP_SETGID any gid and groups, with CAP_SYS_RESOURCE any hard limit and
 * oom_score_adj, with CAP_SYS_NICE any scheduling (setuid(2), setgroups(2), setrlimit(2),
 * sched(7)). Capabilities are bounded set by set: without an exec a task never grows its
 * permitted or bounding set (capabilities(7)), so a task beyond the bound's set got there
 * through an exec of a set-user-ID or file-capability program, or through an edited image;
 * the first is refused too (restore it with a bound that allows it).
 */
import { readFileSync } from 'node:fs';
import { RLIMIT_NAMES } from '../dump/creds.js';
import { FerryError } from '../errors.js';
import { big, type TaskRecord, type ThreadCredsRecord } from '../image/records.js';

/** Capability names by number (capability.h: CAP_CHOWN = 0 … CAP_CHECKPOINT_RESTORE = 40). */
export const CAPABILITIES = [
  'CHOWN', 'DAC_OVERRIDE', 'DAC_READ_SEARCH', 'FOWNER', 'FSETID', 'KILL', 'SETGID', 'SETUID', 'SETPCAP',
  'LINUX_IMMUTABLE', 'NET_BIND_SERVICE', 'NET_BROADCAST', 'NET_ADMIN', 'NET_RAW', 'IPC_LOCK', 'IPC_OWNER',
  'SYS_MODULE', 'SYS_RAWIO', 'SYS_CHROOT', 'SYS_PTRACE', 'SYS_PACCT', 'SYS_ADMIN', 'SYS_BOOT', 'SYS_NICE',
  'SYS_RESOURCE', 'SYS_TIME', 'SYS_TTY_CONFIG', 'MKNOD', 'LEASE', 'AUDIT_WRITE', 'AUDIT_CONTROL', 'SETFCAP',
  'MAC_OVERRIDE', 'MAC_ADMIN', 'SYSLOG', 'WAKE_ALARM', 'BLOCK_SUSPEND', 'AUDIT_READ', 'PERFMON', 'BPF',
  'CHECKPOINT_RESTORE',
] as const;
const CAP_SETGID = 6, CAP_SETUID = 7, CAP_SYS_NICE = 23, CAP_SYS_RESOURCE = 24;
const RLIMIT_NICE = 13, RLIMIT_RTPRIO = 14;
const SCHED_FIFO = 1, SCHED_RR = 2;

/** SECBIT_* names by bit (securebits.h; prctl(2) PR_SET_SECUREBITS). */
const SECUREBITS = [
  'SECBIT_NOROOT', 'SECBIT_NOROOT_LOCKED', 'SECBIT_NO_SETUID_FIXUP', 'SECBIT_NO_SETUID_FIXUP_LOCKED',
  'SECBIT_KEEP_CAPS', 'SECBIT_KEEP_CAPS_LOCKED', 'SECBIT_NO_CAP_AMBIENT_RAISE', 'SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED',
] as const;

const RLIM_INFINITY = (1n << 64n) - 1n;

/** The five capability sets, in the order violations are reported. */
export const CAP_SETS = ['effective', 'permitted', 'inheritable', 'bounding', 'ambient'] as const;
export type CapSet = typeof CAP_SETS[number];

/** A field of a bound, as `CredsBound.origins` names it. */
export type BoundField = 'uids' | 'gids' | 'groups' | CapSet | 'securebits' | 'noNewPrivs' | 'seccomp' | 'rlimits' | 'sched'
  | 'oomScoreAdj';

/**
 * The most a restore may give its tasks. Every field is optional: an absent one bounds
 * nothing, so `{ source }` alone allows anything (today's behaviour without a bound).
 */
export interface CredsBound {
  /** What the bound is, as messages name it: "the bundle's config.json", "--max-creds nobody". */
  source: string;
  /** The uids a task may hold as real, effective, saved and filesystem uid; absent: any. */
  uids?: readonly number[];
  /** The gids a task may hold as real, effective, saved and filesystem gid; absent: any. */
  gids?: readonly number[];
  /** The supplementary groups a task may have (any subset of them); absent: any. */
  groups?: readonly number[];
  /** No uid 0 (root) as any of the four uids. */
  noRootUid?: boolean;
  /** No gid 0 as any of the four gids, nor as a supplementary group. */
  noRootGid?: boolean;
  /** Per set, the most it may hold (bit n = capability n); an absent set: any. */
  caps?: Partial<Record<CapSet, bigint>>;
  /** SECBIT_* bits every thread must have set (restrictions the image may not lift); absent: none. */
  securebits?: number;
  /** Every thread must have no_new_privs (prctl(2) PR_SET_NO_NEW_PRIVS). */
  noNewPrivs?: boolean;
  /** Every thread must have at least one seccomp filter. */
  seccomp?: boolean;
  /** Per resource (RLIMIT_CPU = 0 … RLIMIT_RTTIME = 15), the highest hard limit; RLIM_INFINITY is 2^64-1; absent: any. */
  rlimits?: ReadonlyArray<bigint | undefined>;
  /**
   * Scheduling held to what a thread without CAP_SYS_NICE could set itself (sched(7),
   * setpriority(2)), against the task's own soft limits: 'rt', a real-time priority at most
   * its RLIMIT_RTPRIO; 'all', also a nice value below 0 only down to 20 - RLIMIT_NICE.
   * Absent: any (ferry, root, sets what the image says).
   */
  sched?: 'rt' | 'all';
  /** The lowest oom_score_adj (lower needs CAP_SYS_RESOURCE, proc(5)); absent: any. */
  oomScoreAdj?: number;
  /** Where each field comes from, named after the message: "process.capabilities.effective", "uid 65534". */
  origins?: Partial<Record<BoundField, string>>;
}

/** What of a task a bound looks at (a validated TaskRecord has it). */
export type BoundedTask = Pick<TaskRecord, 'pid' | 'comm' | 'creds'>;

/** Name of capability `n`, as config.json spells it. */
export const capName = (n: number): string => (CAPABILITIES[n] ? `CAP_${CAPABILITIES[n]}` : `capability ${n}`);

/** The bits of `mask`, lowest first. */
function bits(mask: bigint): number[] {
  const out: number[] = [];
  for (let n = 0; mask >> BigInt(n) !== 0n; n++) if ((mask >> BigInt(n)) & 1n) out.push(n);
  return out;
}

const limitText = (v: bigint): string => (v >= RLIM_INFINITY ? 'unlimited' : String(v));

/** What one thread would get beyond the bound: the lines' tails, after "pid P (comm) ". */
function threadExcess(c: ThreadCredsRecord, soft: (r: number) => bigint, bound: CredsBound,
  beyond: (f: BoundField) => string, required: (f: BoundField) => string): string[] {
  const out: string[] = [];
  const okUid = (id: number): boolean => (!bound.uids || bound.uids.includes(id)) && !(bound.noRootUid && id === 0);
  const okGid = (id: number): boolean => (!bound.gids || bound.gids.includes(id)) && !(bound.noRootGid && id === 0);
  const ids = (kind: 'uid' | 'gid', have: readonly number[], ok: (id: number) => boolean, field: BoundField): void => {
    const names = ['real', 'effective', 'saved', 'filesystem'];
    for (const id of [...new Set(have)].filter((x) => !ok(x))) {
      const as = names.filter((_, i) => have[i] === id);
      const list = as.length > 1 ? `${as.slice(0, -1).join(', ')} and ${as.at(-1)!}` : as[0]!;
      out.push(`would get ${kind} ${id} as its ${list} ${kind}, ${beyond(field)}`);
    }
  };
  ids('uid', c.uids, okUid, 'uids');
  ids('gid', c.gids, okGid, 'gids');
  if (bound.groups || bound.noRootGid) {
    const extra = c.groups.filter((g) => (bound.groups && !bound.groups.includes(g)) || (bound.noRootGid && g === 0));
    if (extra.length > 0) out.push(`would get supplementary group${extra.length > 1 ? 's' : ''} ${extra.join(', ')}, ${beyond('groups')}`);
  }
  for (const set of CAP_SETS) {
    const allowed = bound.caps?.[set];
    if (allowed === undefined) continue;
    const extra = bits(big(c.caps[set]) & ~allowed);
    if (extra.length === 0) continue;
    const caps = `capabilit${extra.length > 1 ? 'ies' : 'y'} ${extra.map(capName).join(', ')}`;
    out.push(`would get ${caps} in its ${set} set, ${beyond(set)}`);
  }
  const missingBits = bits(BigInt((bound.securebits ?? 0) & ~c.securebits));
  if (missingBits.length > 0) {
    const names = missingBits.map((b) => SECUREBITS[b] ?? `securebit ${b}`).join(', ');
    out.push(`would run without ${names}, ${required('securebits')}`);
  }
  if (bound.noNewPrivs && !c.noNewPrivs) out.push(`would run without no_new_privs, ${required('noNewPrivs')}`);
  if (bound.seccomp && c.seccomp.length === 0) out.push(`would run without a seccomp filter, ${required('seccomp')}`);
  const rt = c.sched.policy === SCHED_FIFO || c.sched.policy === SCHED_RR;
  if (bound.sched && rt && BigInt(c.sched.priority) > soft(RLIMIT_RTPRIO)) {
    const policy = c.sched.policy === SCHED_FIFO ? 'SCHED_FIFO' : 'SCHED_RR';
    out.push(`would get real-time policy ${policy} priority ${c.sched.priority} above its RLIMIT_RTPRIO of ${limitText(soft(RLIMIT_RTPRIO))}, ${beyond('sched')}`);
  }
  if (bound.sched === 'all' && c.sched.nice < 0 && BigInt(20 - c.sched.nice) > soft(RLIMIT_NICE)) {
    out.push(`would get nice ${c.sched.nice}, below what its RLIMIT_NICE of ${limitText(soft(RLIMIT_NICE))} allows, ${beyond('sched')}`);
  }
  return out;
}

/** One way a task would get more than its bound allows. */
interface Violation {
  /** The task's pid, as the image records it. */
  pid: number;
  /** The whole line. */
  line: string;
}

/** One bound for every task, or each task's own (the untrusted default depends on its executable). */
export type TaskBounds = CredsBound | ((task: BoundedTask) => CredsBound);

function violations(label: string, tasks: readonly BoundedTask[], bounds: TaskBounds): Violation[] {
  const out: Violation[] = [];
  for (const t of tasks) {
    const bound = typeof bounds === 'function' ? bounds(t) : bounds;
    const origin = (f: BoundField): string => (bound.origins?.[f] ? ` (${bound.origins[f]})` : '');
    const beyond = (f: BoundField): string => `beyond what ${bound.source} allows${origin(f)}`;
    const required = (f: BoundField): string => `which ${bound.source} requires${origin(f)}`;
    const who = `image ${label}: pid ${t.pid} (${t.comm})`;
    const leader = new Set<string>();
    const soft = (r: number): bigint => big(t.creds.rlimits[r]?.[0] ?? '0x0');
    t.creds.threads.forEach((c, i) => {
      for (const what of threadExcess(c, soft, bound, beyond, required)) {
        if (i === 0) leader.add(what);
        else if (leader.has(what)) continue;
        out.push({ pid: t.pid, line: `${who}${i === 0 ? '' : ` thread ${c.tid}`} ${what}` });
      }
    });
    t.creds.rlimits.forEach(([, hard], r) => {
      const max = bound.rlimits?.[r];
      if (max === undefined || big(hard) <= max) return;
      const name = RLIMIT_NAMES[r] ?? `resource ${r}`;
      const at = bound.origins?.rlimits ? `${bound.origins.rlimits} ${name}: ${limitText(max)}` : limitText(max);
      out.push({ pid: t.pid, line: `${who} would get a ${name} hard limit of ${limitText(big(hard))}, beyond what ${bound.source} allows (${at})` });
    });
    if (bound.oomScoreAdj !== undefined && t.creds.oomScoreAdj < bound.oomScoreAdj) {
      out.push({ pid: t.pid, line: `${who} would get oom_score_adj ${t.creds.oomScoreAdj}, ${beyond('oomScoreAdj')}` });
    }
  }
  return out;
}

/**
 * Every way the tasks would get more than `bound` allows, one line each, in task order:
 * `image LABEL: pid P (comm) would get …, beyond what SOURCE allows (ORIGIN)`. A thread
 * other than the leader is named ("pid P (comm) thread T") only for what its leader lacks.
 */
export function boundViolations(label: string, tasks: readonly BoundedTask[], bound: TaskBounds): string[] {
  return violations(label, tasks, bound).map((v) => v.line);
}

/**
 * Throws (EPRIVILEGE) the first way the tasks of image `image` would get more than `bound`
 * allows; the line says how many more there are. Call it before any process is created. No
 * bound (undefined): nothing to check.
 */
export function checkBound(image: string, tasks: readonly BoundedTask[], bound: TaskBounds | undefined): void {
  if (!bound) return;
  const found = violations(image === '-' ? '(stdin)' : image, tasks, bound);
  const first = found[0];
  if (!first) return;
  const more = found.length > 1 ? ` (and ${found.length - 1} more)` : '';
  throw new FerryError('EPRIVILEGE', `${first.line}${more}: nothing was restored`, {
    pid: first.pid, ...(image === '-' ? {} : { path: image }),
  });
}

// --- The default for an untrusted image ----------------------------------------------------

/**
 * The bound of a plain restore of an image no trusted key signed (neither this machine's host
 * key, image/host-key.ts, nor a `--trust` key) when no `--max-creds` is given: the
 * credentials an ordinary program could hold. No task runs as root (uid 0 as any uid) nor
 * with gid 0 (also as a supplementary group); no capability in the effective, permitted,
 * inheritable or ambient set; scheduling and oom_score_adj only as an unprivileged thread may
 * set them. The bounding set, no_new_privs, seccomp and securebits are restrictions, left as
 * recorded.
 * A set-user-ID-root executable gives nothing: the image names its executable, but its memory
 * (its code) and its registers are its own word too, so an edited image naming
 * /usr/bin/passwd would run code of its own as root (this bound allowed that before; a
 * reviewer found it). A tree that really holds such a program is restored from a signed
 * image, or with --max-creds.
 */
export function untrustedBound(): CredsBound {
  const source = 'an image no trusted key signed';
  const how = 'sign it and restore with --trust, or allow it with --max-creds';
  const none = `no privilege: ${how}`;
  const noRoot = `no root: an unsigned image's code is its own, whatever executable it names; ${how}`;
  const noGid0 = `no gid 0: an unsigned image's code is its own, whatever executable it names; ${how}`;
  return {
    source,
    noRootUid: true,
    noRootGid: true,
    caps: { effective: 0n, permitted: 0n, inheritable: 0n, ambient: 0n },
    sched: 'all',
    oomScoreAdj: 0,
    origins: {
      uids: noRoot, gids: noGid0, groups: noGid0,
      effective: none, permitted: none, inheritable: none, ambient: none,
      sched: `no CAP_SYS_NICE: ${how}`, oomScoreAdj: `no CAP_SYS_RESOURCE: ${how}`,
    },
  };
}

// --- Bounds from a container's config.json --------------------------------------------------

/** The parts of an OCI runtime config.json (runtime-spec config.md) a bound is made of. */
export interface BoundingConfig {
  process?: {
    user?: { uid?: number; gid?: number; additionalGids?: number[] };
    capabilities?: Record<string, string[] | undefined>;
    noNewPrivileges?: boolean;
    [key: string]: unknown;
  };
  linux?: { seccomp?: unknown; [key: string]: unknown };
}

/**
 * The bound of a container's processes: what the runtime gives them from `config`. The user's
 * uid and gid (0 when absent), its additionalGids; each capability set as listed (a set not
 * listed is empty, as runc makes it; unknown names grant nothing); no_new_privs when
 * noNewPrivileges; a seccomp filter when linux.seccomp is there; each rlimit's hard value;
 * oom_score_adj from process.oomScoreAdj; a real-time priority within the task's
 * RLIMIT_RTPRIO. CAP_SETUID in the permitted set allows any uid, CAP_SETGID any gid and
 * groups, CAP_SYS_RESOURCE any limit and oom_score_adj, CAP_SYS_NICE any scheduling.
 * `source` names the file in messages and errors (EBUNDLE for a field of the wrong type).
 */
export function boundFromConfig(config: BoundingConfig, source = 'the bundle\'s config.json'): CredsBound {
  const bad = (field: string, what: string): never => {
    throw new FerryError('EBUNDLE', `${source}: ${field} must be ${what}`);
  };
  const p = config.process ?? {};
  const user = p.user ?? {};
  const num = (v: unknown, field: string): number => (v === undefined ? 0
    : Number.isSafeInteger(v) && (v as number) >= 0 && (v as number) < 2 ** 32 ? v as number : bad(field, 'a uid or gid'));
  const uid = num(user.uid, 'process.user.uid');
  const gid = num(user.gid, 'process.user.gid');
  const extra = user.additionalGids ?? [];
  if (!Array.isArray(extra)) bad('process.user.additionalGids', 'a list of gids');
  const additional = extra.map((g, i) => num(g, `process.user.additionalGids[${i}]`));

  const caps: Record<CapSet, bigint> = { effective: 0n, permitted: 0n, inheritable: 0n, bounding: 0n, ambient: 0n };
  const listed = p.capabilities ?? {};
  for (const set of CAP_SETS) {
    const names = listed[set] ?? [];
    if (!Array.isArray(names) || !names.every((n) => typeof n === 'string')) bad(`process.capabilities.${set}`, 'a list of capability names');
    for (const name of names) {
      const n = CAPABILITIES.indexOf(name.toUpperCase().replace(/^CAP_/, '') as typeof CAPABILITIES[number]);
      if (n >= 0) caps[set] |= 1n << BigInt(n);
    }
  }
  const can = (cap: number): boolean => ((caps.permitted >> BigInt(cap)) & 1n) === 1n;

  const rlimits: Array<bigint | undefined> = [];
  const rl = p['rlimits'] ?? [];
  if (!Array.isArray(rl)) bad('process.rlimits', 'a list');
  for (const [i, r] of (rl as unknown[]).entries()) {
    const { type, hard } = (r ?? {}) as { type?: unknown; hard?: unknown };
    const at = RLIMIT_NAMES.indexOf(type as typeof RLIMIT_NAMES[number]);
    if (typeof hard !== 'number' || !(hard >= 0)) bad(`process.rlimits[${i}].hard`, 'a number');
    if (at < 0) continue; // a resource this kernel does not have: runc refuses it anyway
    // JSON numbers above 2^53 are rounded; 2^64-1 reads as 2^64: unlimited either way.
    const v = BigInt(Math.trunc(hard as number));
    rlimits[at] = v > RLIM_INFINITY ? RLIM_INFINITY : v;
  }

  const bound: CredsBound = {
    source,
    caps,
    origins: {
      uids: 'process.user.uid', gids: 'process.user.gid', groups: 'process.user.additionalGids',
      ...Object.fromEntries(CAP_SETS.map((s) => [s, `process.capabilities.${s}`])),
      noNewPrivs: 'process.noNewPrivileges', seccomp: 'linux.seccomp', rlimits: 'process.rlimits',
      sched: 'process.capabilities.permitted: no CAP_SYS_NICE', oomScoreAdj: 'process.oomScoreAdj',
    },
  };
  if (!can(CAP_SETUID)) bound.uids = [uid];
  if (!can(CAP_SETGID)) {
    bound.gids = [gid];
    bound.groups = [...new Set([gid, ...additional])];
  }
  if (p.noNewPrivileges === true) bound.noNewPrivs = true;
  if (config.linux?.seccomp !== undefined && config.linux.seccomp !== null) bound.seccomp = true;
  if (!can(CAP_SYS_RESOURCE) && rlimits.length > 0) bound.rlimits = rlimits;
  // The runtime sets no scheduling (a process inherits its caller's nice): only real-time.
  if (!can(CAP_SYS_NICE)) bound.sched = 'rt';
  const oom = p['oomScoreAdj'];
  if (oom !== undefined && !Number.isSafeInteger(oom)) bad('process.oomScoreAdj', 'an integer');
  if (oom !== undefined && !can(CAP_SYS_RESOURCE)) bound.oomScoreAdj = oom as number;
  return bound;
}

// --- Bounds from a policy string ----------------------------------------------------------

/** The user and group databases, as text (passwd(5), group(5)). */
export interface UserDb {
  passwd: string;
  group: string;
}

/** /etc/passwd and /etc/group of this machine. */
export function readUserDb(): UserDb {
  return { passwd: readFileSync('/etc/passwd', 'utf8'), group: readFileSync('/etc/group', 'utf8') };
}

/** The colon-separated fields of each line of a passwd(5) or group(5) text. */
const rows = (text: string): string[][] => text.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.split(':'));
const isId = (s: string): boolean => /^\d{1,10}$/.test(s) && Number(s) < 2 ** 32;

/**
 * Parses a policy of the most a plain restore may give (the CLI's `--max-creds`):
 *
 *     USER[:GROUP][,caps=CAP[+CAP…]][,nnp][,seccomp][,securebits=BITS]
 *
 * USER is a name of /etc/passwd or a uid; GROUP a name of /etc/group or a gid (default: the
 * user's primary group; a uid with no passwd entry needs one). Every task then runs as that
 * uid and gid, with at most the user's groups (its primary group and the groups of
 * /etc/group that list it by name). `caps` lists the capabilities it may hold in its
 * effective, permitted, inheritable and ambient sets (default: none; `all`; names with or
 * without CAP_, any case); CAP_SETUID in it allows any uid, CAP_SETGID any gid and groups.
 * The bounding set is bounded too when the task may be uid 0 (root, or CAP_SETUID) without
 * `nnp`: root gets its bounding set back by any exec. A user's bounding set only limits
 * what an exec of a set-user-ID or file-capability program gives, as on any process of the
 * machine. Without CAP_SYS_NICE, scheduling is what the thread could set itself (a real-time
 * priority up to its RLIMIT_RTPRIO, nice below 0 down to 20 - RLIMIT_NICE); without
 * CAP_SYS_RESOURCE, oom_score_adj is 0 or more. (Hard limits never go above ferry's own:
 * restore/creds.ts.) `nnp`: every task must have no_new_privs; `seccomp`: every thread a
 * seccomp filter; `securebits`: SECBIT_* bits every thread must have set (a number).
 *
 * `root` (or uid 0) without `caps` allows anything. Errors are EUSAGE, naming `what`.
 */
export function parseMaxCreds(text: string, db: UserDb = readUserDb(), what = '--max-creds'): CredsBound {
  const usage = (msg: string): never => {
    throw new FerryError('EUSAGE', `${what} ${JSON.stringify(text)}: ${msg} (USER[:GROUP][,caps=CAP+CAP][,nnp][,seccomp][,securebits=BITS])`);
  };
  const [who = '', ...options] = text.split(',');
  const [userText = '', groupText, ...rest] = who.split(':');
  if (userText === '' || groupText === '' || rest.length > 0) usage('expected a user, or user:group');
  const passwd = rows(db.passwd);
  const groupRows = rows(db.group);

  const pw = isId(userText) ? passwd.find((r) => r[2] === userText) : passwd.find((r) => r[0] === userText);
  if (!pw && !isId(userText)) usage(`no user ${userText} in /etc/passwd`);
  const uid = Number(pw ? pw[2] : userText);
  let gid: number;
  if (groupText === undefined) {
    if (!pw || !isId(pw[3] ?? '')) return usage(`uid ${uid} has no entry in /etc/passwd: give its group too (${uid}:GID)`);
    gid = Number(pw[3]);
  } else if (isId(groupText)) {
    gid = Number(groupText);
  } else {
    const gr = groupRows.find((r) => r[0] === groupText);
    if (!gr || !isId(gr[2] ?? '')) return usage(`no group ${groupText} in /etc/group`);
    gid = Number(gr[2]);
  }
  const name = pw?.[0];
  const memberOf = name === undefined ? [] : groupRows.filter((r) => (r[3] ?? '').split(',').includes(name) && isId(r[2] ?? '')).map((r) => Number(r[2]));

  let caps: bigint | undefined = uid === 0 ? undefined : 0n;
  let nnp = false, seccomp = false;
  let securebits: number | undefined;
  for (const o of options) {
    const [key = '', value] = o.split('=', 2);
    if (key === 'nnp' && value === undefined) nnp = true;
    else if (key === 'seccomp' && value === undefined) seccomp = true;
    else if (key === 'securebits' && value !== undefined && /^(0x[0-9a-f]+|\d+)$/i.test(value) && Number(value) < 2 ** 31) securebits = Number(value);
    else if (key === 'caps' && value !== undefined) {
      if (value === 'all') caps = undefined;
      else if (value === 'none' || value === '') caps = 0n;
      else {
        caps = 0n;
        for (const c of value.split('+')) {
          const n = CAPABILITIES.indexOf(c.toUpperCase().replace(/^CAP_/, '') as typeof CAPABILITIES[number]);
          if (n < 0) usage(`unknown capability ${c}`);
          caps |= 1n << BigInt(n);
        }
      }
    } else usage(`unknown option ${o}`);
  }
  const has = (cap: number): boolean => caps === undefined || ((caps >> BigInt(cap)) & 1n) === 1n;
  const capsText = caps === undefined ? 'every capability' : caps === 0n ? 'no capabilities' : bits(caps).map(capName).join(', ');

  const bound: CredsBound = { source: `${what} ${text}`, origins: {} };
  const origins = bound.origins!;
  if (!has(CAP_SETUID)) {
    bound.uids = [uid];
    origins.uids = `uid ${uid}`;
  }
  if (!has(CAP_SETGID)) {
    bound.gids = [gid];
    bound.groups = [...new Set([gid, ...memberOf])];
    origins.gids = `gid ${gid}`;
    origins.groups = `groups ${bound.groups.join(', ')}`;
  }
  if (caps !== undefined) {
    bound.caps = { effective: caps, permitted: caps, inheritable: caps, ambient: caps };
    for (const s of ['effective', 'permitted', 'inheritable', 'ambient'] as const) origins[s] = capsText;
    // Root gets its bounding set back on any exec (capabilities(7), "Capabilities and
    // execution of programs by root"), unless no_new_privs holds it to what it had.
    if ((uid === 0 || has(CAP_SETUID)) && !nnp) {
      bound.caps.bounding = caps;
      origins.bounding = `${capsText}, as uid 0 is allowed`;
    }
  }
  if (nnp) {
    bound.noNewPrivs = true;
    origins.noNewPrivs = 'nnp';
  }
  if (seccomp) {
    bound.seccomp = true;
    origins.seccomp = 'seccomp';
  }
  if (!has(CAP_SYS_NICE)) {
    bound.sched = 'all';
    origins.sched = 'no CAP_SYS_NICE';
  }
  if (!has(CAP_SYS_RESOURCE)) {
    bound.oomScoreAdj = 0;
    origins.oomScoreAdj = 'no CAP_SYS_RESOURCE';
  }
  if (securebits !== undefined && securebits !== 0) {
    bound.securebits = securebits;
    origins.securebits = `securebits=0x${securebits.toString(16)}`;
  }
  return bound;
}
