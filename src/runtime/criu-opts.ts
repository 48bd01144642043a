/**
 * criu_opts (CRIU's rpc.proto, field 2 of criu_req) as ferry's criu reads it for DUMP and
 * RESTORE, and the policy for each option: used, accepted without effect, or refused. runc
 * 1.1 was seen (FERRY_CRIU_LOG) to send, for `runc checkpoint`: images_dir_fd, pid,
 * leave_running, ext_unix_sk, tcp_established, shell_job, file_locks, log_level, log_file
 * ("dump.log"), notify_scripts, root (the rootfs), auto_dedup, ext_mnt (every bind mount,
 * cgroup mount, masked path and device, key = val = the path in the container),
 * manage_cgroups, manage_cgroups_mode, empty_ns, freeze_cgroup (the freezer cgroup's path),
 * lazy_pages, orphan_pts_master, config_file ("/etc/criu/runc.conf"), and ps with
 * --page-server, work_dir_fd with --work-path; for `runc restore` also evasive_devices,
 * rst_sibling, cg_root (each controller's cgroup, into which runc has already moved criu),
 * inherit_fd (descriptors.json's pipes, key "pipe:[N]", fd = criu's own descriptor) and
 * root = runc's bind mount of the rootfs (STATE/ID/criu-root).
 *
 * Every option is named in a refusal as runc's flag where there is one. The request is
 * untrusted only in the sense that it may ask for things ferry does not do: it comes from
 * the runtime that started this program, as root.
 */
import { existsSync, readFileSync } from 'node:fs';
import { bytesField, decodeMessage, int32, ProtoError, uintField, type ProtoFields, type ProtoValue } from './protobuf.js';

/** inherit_fd: a file of the image (by its link text at dump) replaced by criu's descriptor `fd`. */
export interface InheritFd {
  key: string;
  fd: number;
}

/** ext_mount_map: a mount outside the image (key: its path in the container; val: at restore, its source). */
export interface ExtMount {
  key: string;
  val: string;
}

/** The options ferry's criu uses; the rest are checked by `refusal` and otherwise left alone. */
export interface CriuOpts {
  /** images_dir_fd (1): a descriptor of the caller (runc), reached through /proc/PEER/fd. */
  imagesDirFd?: number;
  /** pid (2): the tree's root (dump). */
  pid?: number;
  leaveRunning: boolean;
  extUnixSk: boolean;
  tcpEstablished: boolean;
  shellJob: boolean;
  fileLocks: boolean;
  /**
   * orphan_pts_master (50): the container's terminal (runc's `terminal: true`) is dumped, and
   * at restore made again with its new master sent to the caller ("orphan-pts-master").
   */
  orphanPtsMaster: boolean;
  /** log_level (9): 4 and up is debug. */
  logLevel?: number;
  /** log_file (10): a name in the work dir. */
  logFile?: string;
  /** notify_scripts (12): send notifications and wait for each answer. */
  notifyScripts: boolean;
  /** root (13): the container's rootfs (dump) or runc's bind mount of it (restore). */
  root?: string;
  /** parent_img (14): the parent pre-dump's directory, relative to the images dir (runc's --parent-path). */
  parentImg?: string;
  /** work_dir_fd (17): like images_dir_fd; absent: the images dir. */
  workDirFd?: number;
  extMnt: ExtMount[];
  inheritFd: InheritFd[];
  /** external (37): "KIND[ID]:KEY" resources outside the image. */
  external: string[];
  /** freeze_cgroup (44): the cgroup to freeze (runc: the container's freezer cgroup). */
  freezeCgroup?: string;
  tcpSkipInFlight: boolean;
  tcpClose: boolean;
  /** config_file (51): a CRIU configuration file the caller wants read. */
  configFile?: string;
  /** Every field as decoded. */
  fields: ProtoFields;
}

/** How each option field is treated. */
type Policy =
  | { name: string; use: true }
  | { name: string; ignore: string }
  | { name: string; refuse: string };

/**
 * Field number -> name and policy. "ignore" carries why it has no effect with ferry;
 * "refuse" the words for the refusal (used when the field is set to anything but 0/false/"").
 */
const POLICY: ReadonlyMap<number, Policy> = new Map<number, Policy>([
  [1, { name: 'images_dir_fd', use: true }],
  [2, { name: 'pid', use: true }],
  [3, { name: 'leave_running', use: true }],
  [4, { name: 'ext_unix_sk', use: true }],
  [5, { name: 'tcp_established', use: true }],
  [6, { name: 'evasive_devices', ignore: 'devices are bind mounts the runtime makes again' }],
  [7, { name: 'shell_job', use: true }],
  [8, { name: 'file_locks', use: true }],
  [9, { name: 'log_level', use: true }],
  [10, { name: 'log_file', use: true }],
  [11, { name: 'ps', refuse: 'a page server (--page-server)' }],
  [12, { name: 'notify_scripts', use: true }],
  [13, { name: 'root', use: true }],
  [14, { name: 'parent_img', use: true }],
  [15, { name: 'track_mem', ignore: 'a pre-dump always tracks memory; a dump continues the tracking of the parent it names' }],
  [16, { name: 'auto_dedup', ignore: 'a dump against a parent names the parent\'s pages instead of copying them; the parent is left as it is' }],
  [17, { name: 'work_dir_fd', use: true }],
  [18, { name: 'link_remap', ignore: 'deleted files are kept in the image (files.deleted_max_bytes)' }],
  [19, { name: 'veths', refuse: 'veth pairs (network interfaces are the runtime\'s)' }],
  [20, { name: 'cpu_cap', ignore: 'ferry checks the CPU features its image needs' }],
  [21, { name: 'force_irmap', ignore: 'ferry does not need inotify path maps' }],
  [22, { name: 'exec_cmd', refuse: 'running a command after restore (--exec-cmd)' }],
  [23, { name: 'ext_mnt', use: true }],
  [24, { name: 'manage_cgroups', ignore: 'the runtime makes the cgroups from config.json' }],
  [25, { name: 'cg_root', ignore: 'the runtime has already put criu into the container\'s cgroups' }],
  [26, { name: 'rst_sibling', ignore: 'the restored init is re-parented to the runtime (a child subreaper)' }],
  [27, { name: 'inherit_fd', use: true }],
  [28, { name: 'auto_ext_mnt', ignore: 'mounts are the runtime\'s' }],
  [29, { name: 'ext_sharing', ignore: 'mounts are the runtime\'s' }],
  [30, { name: 'ext_masters', ignore: 'mounts are the runtime\'s' }],
  [31, { name: 'skip_mnt', ignore: 'mounts are the runtime\'s' }],
  [32, { name: 'enable_fs', ignore: 'mounts are the runtime\'s' }],
  [33, { name: 'unix_sk_ino', refuse: 'external unix sockets by inode' }],
  [34, { name: 'manage_cgroups_mode', ignore: 'the runtime makes the cgroups from config.json; settings changed at run time are not carried over' }],
  [35, { name: 'ghost_limit', ignore: 'deleted files are bounded by files.deleted_max_bytes' }],
  [36, { name: 'irmap_scan_paths', ignore: 'ferry does not need inotify path maps' }],
  [37, { name: 'external', use: true }],
  [38, { name: 'empty_ns', ignore: 'ferry does not dump namespaces: the runtime makes them' }],
  [39, { name: 'join_ns', refuse: 'joining namespaces at restore (join_ns)' }],
  [41, { name: 'cgroup_props', ignore: 'the runtime makes the cgroups from config.json' }],
  [42, { name: 'cgroup_props_file', ignore: 'the runtime makes the cgroups from config.json' }],
  [43, { name: 'cgroup_dump_controller', ignore: 'the runtime makes the cgroups from config.json' }],
  [44, { name: 'freeze_cgroup', use: true }],
  [45, { name: 'timeout', ignore: 'ferry bounds each wait itself' }],
  [46, { name: 'tcp_skip_in_flight', use: true }],
  [47, { name: 'weak_sysctls', ignore: 'ferry does not restore sysctls' }],
  [48, { name: 'lazy_pages', refuse: 'lazy pages (--lazy-pages)' }],
  [49, { name: 'status_fd', ignore: 'it only serves lazy pages, and runc closes it' }],
  [50, { name: 'orphan_pts_master', use: true }],
  [51, { name: 'config_file', use: true }],
  [52, { name: 'tcp_close', use: true }],
  [53, { name: 'lsm_profile', ignore: 'the runtime applies the LSM profile of config.json' }],
  [54, { name: 'tls_cacert', refuse: 'TLS for a page server' }],
  [55, { name: 'tls_cacrl', refuse: 'TLS for a page server' }],
  [56, { name: 'tls_cert', refuse: 'TLS for a page server' }],
  [57, { name: 'tls_key', refuse: 'TLS for a page server' }],
  [58, { name: 'tls', refuse: 'TLS for a page server' }],
  [59, { name: 'tls_no_cn_verify', refuse: 'TLS for a page server' }],
  [60, { name: 'cgroup_yard', ignore: 'the runtime makes the cgroups' }],
  [61, { name: 'pre_dump_mode', ignore: 'ferry\'s pre-dump reads pages through /proc/PID/mem in every mode' }],
  [62, { name: 'pidfd_store_sk', refuse: 'a pidfd store (pre-dump)' }],
  [63, { name: 'lsm_mount_context', ignore: 'the runtime mounts with the context of config.json' }],
  [64, { name: 'network_lock', ignore: 'ferry locks connections its own way (docs/safety.md)' }],
  [65, { name: 'mntns_compat_mode', ignore: 'ferry does not dump mount namespaces' }],
]);

/** Largest descriptor number accepted from a request. */
const MAX_FD = 1 << 20;

function isSet(v: ProtoValue): boolean {
  return typeof v === 'bigint' ? v !== 0n : v.length > 0;
}

function str(f: ProtoFields, n: number): string | undefined {
  return bytesField(f, n)?.toString('utf8');
}

function bool(f: ProtoFields, n: number): boolean {
  return (uintField(f, n) ?? 0n) !== 0n;
}

function fd(f: ProtoFields, n: number, name: string): number | undefined {
  const v = uintField(f, n);
  if (v === undefined) return undefined;
  const x = int32(v);
  if (x < 0 || x > MAX_FD) throw new ProtoError(`${name} ${x} is not a descriptor number`);
  return x;
}

function strings(f: ProtoFields, n: number): string[] {
  return (f.get(n) ?? []).map((v) => {
    if (typeof v === 'bigint') throw new ProtoError(`field ${n} is a number, a string was expected`);
    return v.toString('utf8');
  });
}

/** Decodes criu_opts; throws ProtoError on a malformed one. */
export function decodeOpts(buf: Buffer): CriuOpts {
  const f = decodeMessage(buf);
  const pairs = (n: number): Array<{ key: string; second: ProtoFields }> => (f.get(n) ?? []).map((v) => {
    if (typeof v === 'bigint') throw new ProtoError(`field ${n} is a number, a message was expected`);
    const m = decodeMessage(v);
    return { key: str(m, 1) ?? '', second: m };
  });
  const o: CriuOpts = {
    leaveRunning: bool(f, 3), extUnixSk: bool(f, 4), tcpEstablished: bool(f, 5), shellJob: bool(f, 7),
    fileLocks: bool(f, 8), notifyScripts: bool(f, 12), tcpSkipInFlight: bool(f, 46), tcpClose: bool(f, 52),
    orphanPtsMaster: bool(f, 50),
    extMnt: pairs(23).map((p) => ({ key: p.key, val: str(p.second, 2) ?? '' })),
    inheritFd: pairs(27).map((p) => {
      const n = uintField(p.second, 2);
      const x = n === undefined ? -1 : int32(n);
      if (x < 0 || x > MAX_FD) throw new ProtoError(`inherit_fd ${JSON.stringify(p.key)} has no descriptor number`);
      return { key: p.key, fd: x };
    }),
    external: strings(f, 37),
    fields: f,
  };
  const images = fd(f, 1, 'images_dir_fd');
  if (images !== undefined) o.imagesDirFd = images;
  const work = fd(f, 17, 'work_dir_fd');
  if (work !== undefined) o.workDirFd = work;
  const pid = uintField(f, 2);
  if (pid !== undefined) o.pid = int32(pid);
  const level = uintField(f, 9);
  if (level !== undefined) o.logLevel = int32(level);
  for (const [n, key] of [[10, 'logFile'], [13, 'root'], [14, 'parentImg'], [44, 'freezeCgroup'], [51, 'configFile']] as const) {
    const v = str(f, n);
    if (v !== undefined) o[key] = v;
  }
  return o;
}

/** Kinds of `external` entries that name namespaces or mounts: the runtime's, accepted. */
const EXTERNAL_ACCEPTED = /^(net|pid|mnt|ipc|uts)\[[^\]]*\]:/;

/**
 * Why ferry cannot do what `o` asks (one line, without "nothing was done"), or undefined. An
 * option ferry knows to refuse, an unknown option set to anything but its zero value, an
 * `external` resource other than a namespace or mount, or a CRIU configuration file with
 * settings in it (ferry does not read it) is refused.
 */
export function refusal(o: CriuOpts): string | undefined {
  for (const [n, values] of o.fields) {
    const p = POLICY.get(n);
    const set = values.some(isSet);
    if (p === undefined) {
      if (set) return `criu option field ${n} (not known to ferry) is not supported by ferry`;
      continue;
    }
    if ('refuse' in p && set) return `${p.refuse} is not supported by ferry`;
  }
  const ext = o.external.find((e) => !EXTERNAL_ACCEPTED.test(e));
  if (ext !== undefined) return `external resource ${JSON.stringify(ext.slice(0, 200))} is not supported by ferry's criu`;
  if (o.configFile !== undefined && configHasSettings(o.configFile)) {
    return `the CRIU configuration file ${o.configFile} has settings, which ferry does not read: empty it or move it away`;
  }
  return undefined;
}

/** Whether a CRIU configuration file exists with anything but blank lines and comments. */
function configHasSettings(path: string): boolean {
  if (!path.startsWith('/') || !existsSync(path)) return false;
  let text: string;
  try {
    text = readFileSync(path, 'utf8').slice(0, 1 << 16);
  } catch {
    return false;
  }
  return text.split('\n').some((l) => l.trim() !== '' && !l.trim().startsWith('#'));
}

/** The name of option field `n` (logs, docs). */
export function optionName(n: number): string {
  return POLICY.get(n)?.name ?? `field ${n}`;
}
