/**
 * `ferry check`: a preflight of this host. Each check probes what ferry uses (a syscall made
 * on ferry's own process, a file of /proc or /sys, a program's --version), never a workload,
 * and says what works, what does not and what to do. Checks marked `needed` are what every
 * checkpoint and restore rely on: the command exits 1 when one of them fails. The others
 * name what a feature needs (containers, --tcp-established, migration) and only warn.
 */
import { spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { release } from 'node:os';
import { delimiter, join } from 'node:path';
import { describeCause, errnoCode } from '../errors.js';
import { probeNetLock } from '../files/tcp-lock.js';
import { hostPublicKey } from '../image/host-key.js';
import { parseStatus } from '../proc/status.js';
import type { CheckCliOptions } from './args.js';
import type { RunContext } from './context.js';
import { printLine } from './output.js';

/** One line of the report. */
export interface CheckItem {
  /** Short name: `root`, `ptrace`, `kcmp`… */
  name: string;
  /** `ok`; `warn`: a feature will not work; `fail`: ferry cannot work (a needed check); `info`: facts. */
  status: 'ok' | 'warn' | 'fail' | 'info';
  /** What was found, and for a problem what to do. */
  detail: string;
}

/** What `ferry check --json` prints. */
export interface CheckReport {
  /** Whether checkpoint and restore can work here (no needed check failed). */
  ok: boolean;
  checks: CheckItem[];
}

/** A check: a needed one fails the report when it does not pass. */
interface Probe {
  name: string;
  needed: boolean;
  run(): { ok: boolean; detail: string; info?: boolean };
}

const KCMP_VM = 1;
const AF_INET = 2, SOCK_STREAM = 1, SOL_TCP = 6, TCP_REPAIR = 19;
const O_PATH = 0o10000000, O_DIRECTORY = 0o200000;
const RESOLVE_NO_MAGICLINKS = 0x02, RESOLVE_IN_ROOT = 0x10;
const CAP = { SYS_PTRACE: 19, SYS_ADMIN: 21, SYS_RESOURCE: 24, NET_ADMIN: 12, CHECKPOINT_RESTORE: 40 } as const;


const has = (caps: bigint, n: number): boolean => ((caps >> BigInt(n)) & 1n) === 1n;

/** Kernel release as [major, minor]. */
function kernelVersion(): [number, number] {
  const m = /^(\d+)\.(\d+)/.exec(release());
  return m ? [Number(m[1]), Number(m[2])] : [0, 0];
}
const kernelAtLeast = (major: number, minor: number): boolean => {
  const [a, b] = kernelVersion();
  return a > major || (a === major && b >= minor);
};

/** The first line of `cmd --version`, or undefined when it is not installed or fails. */
function versionOf(cmd: string): string | undefined {
  const r = spawnSync(cmd, ['--version'], { timeout: 5000, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  if (r.status !== 0 || typeof r.stdout !== 'string') return undefined;
  return r.stdout.split('\n').find((l) => l.trim() !== '')?.trim();
}

/** The first `name` in PATH, as its real path, or undefined. */
function inPath(name: string): string | undefined {
  for (const dir of (process.env['PATH'] ?? '/usr/local/bin:/usr/bin:/bin').split(delimiter)) {
    const p = join(dir || '.', name);
    try {
      accessSync(p, constants.X_OK);
      if (statSync(p).isFile()) return realpathSync(p);
    } catch { /* not here */ }
  }
  return undefined;
}

const readText = (path: string): string | undefined => {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
};

/** Every probe, in the order printed. `pkg` is ferry's package root. */
function probes(ctx: RunContext, pkg: string, loadNative: () => typeof import('../native/binding.js')): Probe[] {
  const caps = parseStatus(readFileSync('/proc/self/status', 'utf8')).capEff;
  const binding = (): ReturnType<typeof import('../native/binding.js')['native']> => loadNative().native();
  return [
    {
      name: 'node', needed: true, run: () => {
        const major = Number(process.versions.node.split('.')[0]);
        return major >= 20 ? { ok: true, detail: `Node.js ${process.versions.node}` }
          : { ok: false, detail: `Node.js ${process.versions.node} is too old: install Node.js 20 or later` };
      },
    },
    {
      name: 'root', needed: true, run: () => {
        if (process.geteuid?.() !== 0) return { ok: false, detail: 'not running as root: run ferry as root (sudo)' };
        const missing = (['SYS_PTRACE', 'SYS_ADMIN'] as const).filter((c) => !has(caps, CAP[c]));
        if (missing.length > 0) return { ok: false, detail: `root without ${missing.map((c) => `CAP_${c}`).join(', ')}: run ferry with them (a privileged container)` };
        return { ok: true, detail: 'root with CAP_SYS_PTRACE and CAP_SYS_ADMIN' };
      },
    },
    {
      name: 'sys_resource', needed: false, run: () => has(caps, CAP.SYS_RESOURCE)
        ? { ok: true, detail: 'CAP_SYS_RESOURCE: restore can raise hard limits and pipe sizes as recorded' }
        : { ok: false, detail: 'no CAP_SYS_RESOURCE: a restore fails for a process whose hard limits are above ferry\'s own, or a pipe bigger than /proc/sys/fs/pipe-max-size' },
    },
    {
      name: 'addon', needed: true, run: () => {
        try {
          binding();
        } catch (err) {
          return { ok: false, detail: `the native addon does not load: ${describeCause(err)} (run npm run build)` };
        }
        const stub = ctx.config.restore.stub || loadNative().defaultStubPath();
        if (!existsSync(stub)) return { ok: false, detail: `the restore stub ${stub} is missing: run npm run build` };
        return { ok: true, detail: `native addon and restore stub ${stub}` };
      },
    },
    {
      name: 'ptrace', needed: true, run: () => {
        const scope = readText('/proc/sys/kernel/yama/ptrace_scope')?.trim();
        if (scope === '3') return { ok: false, detail: 'kernel.yama.ptrace_scope is 3: no process may be traced until reboot; boot with it at 2 or less' };
        return { ok: true, detail: scope === undefined ? 'ptrace allowed (no Yama)' : `ptrace allowed (kernel.yama.ptrace_scope ${scope}; root may trace any process)` };
      },
    },
    {
      name: 'checkpoint_restore', needed: true, run: () => existsSync('/proc/sys/kernel/ns_last_pid')
        ? { ok: true, detail: 'the kernel has CONFIG_CHECKPOINT_RESTORE (PTRACE_O_SUSPEND_SECCOMP, map_files, ns_last_pid)' }
        : { ok: false, detail: 'the kernel lacks CONFIG_CHECKPOINT_RESTORE (no /proc/sys/kernel/ns_last_pid): use a kernel built with it' },
    },
    {
      name: 'clone3_set_tid', needed: true, run: () => kernelAtLeast(5, 5)
        ? { ok: true, detail: `clone3 with set_tid (kernel ${release()}): processes come back with their PIDs` }
        : { ok: false, detail: `kernel ${release()} has no clone3 set_tid (5.5+): restore cannot give back PIDs; upgrade the kernel` },
    },
    {
      name: 'kcmp', needed: true, run: () => {
        try {
          binding().kcmp(process.pid, process.pid, KCMP_VM, 0, 0);
          return { ok: true, detail: 'kcmp(2): shared files and memory are told apart' };
        } catch (err) {
          return { ok: false, detail: `kcmp(2) fails (${errnoCode(err) ?? describeCause(err)}): the kernel needs CONFIG_KCMP` };
        }
      },
    },
    {
      name: 'pidfd_getfd', needed: true, run: () => {
        let pidfd = -1;
        try {
          const n = binding();
          pidfd = n.pidfdOpen(process.pid);
          n.closeFd(n.pidfdGetfd(pidfd, 0));
          return { ok: true, detail: 'pidfd_open and pidfd_getfd(2): descriptors are copied without injecting code' };
        } catch (err) {
          return { ok: false, detail: `pidfd_getfd(2) fails (${errnoCode(err) ?? describeCause(err)}): needs kernel 5.6+` };
        } finally {
          if (pidfd >= 0) binding().closeFd(pidfd);
        }
      },
    },
    {
      name: 'openat2', needed: true, run: () => {
        try {
          const n = binding();
          n.closeFd(n.openat2(-100, '/', O_PATH | O_DIRECTORY, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS));
          return { ok: true, detail: 'openat2(2) RESOLVE_IN_ROOT: restore confines every path of an image' };
        } catch (err) {
          return { ok: false, detail: `openat2(2) fails (${errnoCode(err) ?? describeCause(err)}): needs kernel 5.6+` };
        }
      },
    },
    {
      name: 'timer_ids', needed: false, run: () => kernelAtLeast(6, 15)
        ? { ok: true, detail: 'PR_TIMER_CREATE_RESTORE_IDS: POSIX timers keep their ids' }
        : { ok: false, detail: `kernel ${release()} may lack PR_TIMER_CREATE_RESTORE_IDS (6.15+): a process with POSIX timers cannot be restored` },
    },
    {
      name: 'tcp_repair', needed: false, run: () => {
        let fd = -1;
        try {
          const n = binding();
          fd = n.socket(AF_INET, SOCK_STREAM, 0);
          n.setSockInt(fd, SOL_TCP, TCP_REPAIR, 1);
          return { ok: true, detail: 'TCP_REPAIR: --tcp-established works' };
        } catch (err) {
          return { ok: false, detail: `TCP_REPAIR is refused (${errnoCode(err) ?? describeCause(err)}): --tcp-established needs CAP_NET_ADMIN` };
        } finally {
          if (fd >= 0) binding().closeFd(fd);
        }
      },
    },
    { name: 'net_lock', needed: false, run: probeNetLock },
    {
      name: 'host_key', needed: true, run: () => {
        const path = ctx.config.image.hostKey;
        if (path === '') return { ok: true, info: true, detail: 'no host key (image.host_key = ""): images are unsigned unless a key is given' };
        if (process.geteuid?.() !== 0) return { ok: true, info: true, detail: `host key ${path} not checked: only root may read it` };
        try {
          const k = hostPublicKey(path);
          return { ok: true, detail: k ? `host key ${path} (${k.keyId}) signs the images made here` : `no host key yet: the first checkpoint makes ${path}` };
        } catch (err) {
          return { ok: false, detail: describeCause(err) };
        }
      },
    },
    {
      name: 'work_dir', needed: false, run: () => {
        const dir = ctx.config.image.workDir;
        try {
          accessSync(dir, constants.W_OK);
          return { ok: true, detail: `image.work_dir ${dir} is writable (restore --image - spools there)` };
        } catch (err) {
          return { ok: false, detail: `image.work_dir ${dir}: ${describeCause(err)}: restore --image - fails; set image.work_dir` };
        }
      },
    },
    {
      name: 'cgroups', needed: false, run: () => {
        const v2 = ['/sys/fs/cgroup/cgroup.controllers', '/sys/fs/cgroup/unified/cgroup.controllers'].find(existsSync);
        const freezer = existsSync('/sys/fs/cgroup/freezer');
        const layout = existsSync('/sys/fs/cgroup/cgroup.controllers') ? 'cgroup v2 only' : v2 ? 'hybrid (v1 controllers, v2 at /sys/fs/cgroup/unified)' : 'cgroup v1';
        if (!freezer && !existsSync('/sys/fs/cgroup/cgroup.controllers')) return { ok: false, detail: `${layout} without a freezer: containers cannot be frozen` };
        return { ok: true, detail: `${layout}; containers are frozen with the ${freezer ? 'v1 freezer' : 'v2 cgroup.freeze'}` };
      },
    },
    {
      name: 'runc', needed: false, run: () => {
        const v = versionOf('runc');
        if (!v) return { ok: true, info: true, detail: 'runc is not installed: no runc containers' };
        const criu = inPath('criu');
        const ours = realpathSync(join(pkg, 'bin', 'criu'));
        const calls = criu === ours ? `runc checkpoint/restore call ferry's criu (${criu})`
          : criu ? `runc calls ${criu}, not ferry's: use ferry checkpoint CONTAINER, or put ${ours} first in PATH`
            : `no criu in PATH: use ferry checkpoint CONTAINER, or link ${ours} into PATH as criu`;
        return { ok: true, info: true, detail: `${v}; ${calls}` };
      },
    },
    {
      name: 'crun', needed: false, run: () => {
        const v = versionOf('crun');
        if (!v) return { ok: true, info: true, detail: 'crun is not installed' };
        const hybrid = !existsSync('/sys/fs/cgroup/cgroup.controllers');
        return hybrid ? { ok: false, detail: `${v}: refuses this host's cgroup layout (it needs cgroup v2 only); use runc` }
          : { ok: true, info: true, detail: v };
      },
    },
    {
      name: 'podman', needed: false, run: () => {
        const v = versionOf('podman');
        if (!v) return { ok: true, info: true, detail: 'podman is not installed' };
        const conf = ['/etc/containers/containers.conf', '/usr/share/containers/containers.conf'].map(readText).find((t) => t !== undefined) ?? '';
        const runtime = /^\s*runtime\s*=\s*"([^"]*)"/m.exec(conf)?.[1];
        const runtimeBin = realpathSync(join(pkg, 'bin', 'ferry-runtime'));
        const via = runtime !== undefined && /ferry-runtime/.test(runtime) ? `its default runtime is ${runtime}, which is ferry`
          : `checkpoint with podman --runtime ${runtimeBin} (its default runtime is ${runtime ?? 'runc'})`;
        return { ok: true, info: true, detail: `${v}; ${via}` };
      },
    },
    {
      name: 'userfaultfd', needed: false, run: () => existsSync('/proc/sys/vm/unprivileged_userfaultfd')
        ? { ok: true, info: true, detail: `userfaultfd is built in${kernelAtLeast(6, 7) ? ', with PAGEMAP_SCAN (6.7+)' : ''}: ferry migrate tracks a running tree's writes with it (pre-copy)` }
        : { ok: true, info: true, detail: 'no userfaultfd in this kernel: ferry migrate goes by stop and copy (no pre-copy)' },
    },
    {
      name: 'soft_dirty', needed: false, run: () => / sd( |$)/m.test(readText('/proc/self/smaps')?.match(/^VmFlags:.*$/m)?.[0] ?? '')
        ? { ok: true, info: true, detail: 'soft-dirty page tracking is available' }
        : { ok: true, info: true, detail: 'no soft-dirty page tracking in this kernel (pre-copy uses userfaultfd write-protection instead)' },
    },
    {
      name: 'time_ns', needed: false, run: () => existsSync('/proc/self/ns/time')
        ? { ok: true, info: true, detail: 'time namespaces: a restored container\'s clocks go on from its checkpoint' }
        : { ok: true, info: true, detail: 'no time namespaces in this kernel: a restored container\'s clocks show the downtime' },
    },
  ];
}

/** Runs every check; `pkg` is ferry's package root. */
export function checkHost(ctx: RunContext, pkg: string, loadNative: () => typeof import('../native/binding.js')): CheckReport {
  const checks: CheckItem[] = [];
  let ok = true;
  for (const p of probes(ctx, pkg, loadNative)) {
    let r: ReturnType<Probe['run']>;
    try {
      r = p.run();
    } catch (err) {
      r = { ok: false, detail: `the check itself failed: ${describeCause(err)}` };
    }
    const status = r.info ? 'info' : r.ok ? 'ok' : p.needed ? 'fail' : 'warn';
    if (status === 'fail') ok = false;
    checks.push({ name: p.name, status, detail: r.detail });
  }
  return { ok, checks };
}

/** `ferry check`: prints the report; exit status 1 when checkpoint and restore cannot work. */
export async function runCheck(o: CheckCliOptions, ctx: RunContext): Promise<number> {
  const nat = await import('../native/binding.js');
  const report = checkHost(ctx, nat.PACKAGE_ROOT, () => nat);
  if (o.json) {
    printLine(1, JSON.stringify(report));
  } else {
    const width = Math.max(...report.checks.map((c) => c.name.length));
    for (const c of report.checks) printLine(1, `${c.status.padEnd(4)}  ${c.name.padEnd(width)}  ${c.detail}`);
    const warns = report.checks.filter((c) => c.status === 'warn').length;
    const fails = report.checks.filter((c) => c.status === 'fail').length;
    printLine(1, report.ok
      ? `checkpoint and restore can work on this host${warns ? ` (${warns} warning${warns > 1 ? 's' : ''}: features that will not)` : ''}`
      : `checkpoint and restore cannot work on this host: ${fails} check${fails > 1 ? 's' : ''} failed (fail lines above say what to do)`);
  }
  return report.ok ? 0 : 1;
}
