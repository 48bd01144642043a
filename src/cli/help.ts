/**
 * The manual pages of the CLI, printed by `--help`/`-h` and `ferry help [COMMAND]`.
 * docs/cli.md says the same at more length; keep the two in step.
 */
import type { Command } from './args.js';

const GLOBAL_OPTIONS = `GLOBAL OPTIONS
  --log-level LEVEL
      trace, debug, info, warn, error, fatal or silent. With a log file: the
      level of the records written there (default: log.level of the
      configuration, "warn"). Without a log file: records of this level and
      above are written to standard error; when --log-level is not given,
      nothing is logged to standard error.
  --log-file FILE
      Append the log as JSON lines (pino) to FILE; its directory is created if
      needed. Overrides log.file of the configuration; --log-file '' turns the
      log file off.
  --config FILE
      Read the configuration from FILE, which must exist, instead of
      /etc/ferry/config.toml (read only when present). config/ferry.toml in
      the package documents every key and its default.
  -h, --help
      Show this page and exit.`;

const EXIT_STATUS = `EXIT STATUS
  0    Success.
  1    The operation failed. Exactly one line on standard error says what
       failed, where and what to do ("ferry COMMAND: ..."); the details are in
       the log file, if any.
  2    Usage error: unknown option, missing or invalid value. The line names
       the option and is followed by "Try 'ferry COMMAND --help'.".
  70   A bug in ferry (an internal error): one line says so; details in the log.
  130, 143
       SIGINT or SIGTERM arrived. A checkpoint lets the processes go as they
       were and writes no image (unless only its final kill was left); a
       restore removes what it made (unless the tree already runs). A second
       signal undoes what is left at once and exits.`;

const FILES = `FILES
  /etc/ferry/config.toml
      System configuration, read when present (see --config).`;

/** Pages by topic: 'ferry' is the overview. */
export const HELP: Readonly<Record<'ferry' | Exclude<Command, 'help'>, string>> = {
  ferry: `NAME
  ferry - checkpoint and restore running Linux processes

SYNOPSIS
  ferry checkpoint --pid PID --image PATH [--leave-running] [--json]
  ferry checkpoint CONTAINER --image PATH [--runtime R] [--root DIR] [...]
  ferry restore --image PATH [--pid-file FILE] [--json]
  ferry restore CONTAINER --image PATH [--bundle DIR] [--detach] [...]
  ferry migrate --pid PID --to tcp://HOST:PORT --key FILE [--json]
  ferry migrate CONTAINER --to ssh://[USER@]HOST[:PORT] [--target-id ID] [...]
  ferry receive --listen HOST:PORT --key FILE [--once] [--json]
  ferry receive --stdio [--trust KEYS] [--max-creds SPEC]
  ferry inspect --image PATH [--json] [--verbose]
  ferry keygen --out PREFIX [--json]
  ferry check [--json]
  ferry demo [--json]
  ferry version [--json]
  ferry help [COMMAND]

DESCRIPTION
  Ferry stops a running process from the outside, captures it whole - memory,
  registers, signal state, open files - into an image (a tar stream: a file,
  or a pipe), and brings it back later, on this machine or another one with
  the same kernel, with the same PID, continuing where it stopped. Nothing is
  injected into the process.

  Ferry must run as root: ptrace(2), and clone3(2) with a chosen PID, need it.

COMMANDS
  checkpoint   Capture a running process into an image.
  restore      Bring a process back from an image, with its original PID.
  migrate      Move a running process tree or container to another node.
  receive      Take the process trees and containers ferry migrate sends.
  inspect      Verify an image and show what it holds, without restoring it.
  keygen       Make a key pair to sign images with and to trust them by.
  check        Say what works on this host, what does not, and what to do.
  demo         Checkpoint and restore a small counting process, with the
               timings.
  version      Print the version of ferry.
  help         Show the page of a command: ferry help checkpoint.

  Every command also takes --help.

${GLOBAL_OPTIONS}

${EXIT_STATUS}

${FILES}

EXAMPLES
  Try it on the built-in demo:
      ferry demo
  Move a process to another machine with the same kernel (node2 trusts
  site.pub; without a trusted signature it restores no root process):
      ferry checkpoint --pid 4242 --image - --sign-key /etc/ferry/site.key |
          ssh node2 ferry restore --image - --trust /etc/ferry/site.pub
  Sign images, and restore only signed ones:
      ferry keygen --out /etc/ferry/site
      ferry checkpoint --pid 4242 --image app.tar --sign-key /etc/ferry/site.key
      ferry restore --image app.tar --trust /etc/ferry/site.pub

SEE ALSO
  ferry help checkpoint, ferry help restore; docs/cli.md and
  config/ferry.toml in the package.`,

  checkpoint: `NAME
  ferry checkpoint - capture a running process tree into an image

SYNOPSIS
  ferry checkpoint --pid PID --image PATH [--leave-running] [--json]
                   [--sign-key FILE] [--tcp-established] [--tcp-close]
                   [--ext-unix-sk] [--shell-job] [--file-locks]
                   [--skip-in-flight] [--drop-queued-events]
                   [GLOBAL OPTIONS]
  ferry checkpoint CONTAINER --image PATH [--runtime R] [--root DIR]
                   [--leave-running] [--json] [...]

DESCRIPTION
  Stops the process PID and every process under it with ptrace(2) (every
  thread of every process is stopped before any is read), and captures each
  whole into the image PATH: memory, threads with their registers (the full
  XSAVE state too), signal handlers, masks, pending signals and alternate
  stacks, timers, rseq and robust-list registrations, memory layout, name,
  working directory, umask, credentials and limits, open file descriptors,
  parents, sessions, process groups and unreaped zombies. Then it kills them.
  Memory pages are copied straight from the processes; the syscalls that read
  a thread's state run in it, a small program in a page ferry maps there for
  the moment (it puts the thread back by itself should ferry die meanwhile).

  The image is complete, checksummed and flushed to disk before the process is
  killed. If anything fails, the process is let go with its state as it was
  and keeps running, and no partial image file is left behind.

  Refused before the tree is read, with the reason: a PID that does not
  exist, a thread ID, a kernel thread, a zombie, a process already being
  traced (a debugger), and what this version does not support yet: a process
  in another pid or user namespace, a session or process group led from
  outside the tree (other than the root's), part of a System V segment, and
  descriptors of a kind not handled yet. Handled: regular files,
  directories and O_PATH descriptors (deleted-but-open files and memfds
  too), pipes and FIFOs, character devices, terminals, unix sockets, TCP and
  UDP sockets (TCP connections with --tcp-established), eventfd, signalfd,
  timerfd, epoll, inotify, fanotify, pidfds of the tree's processes (or of
  ones already reaped), and file locks (with --file-locks); a state of these
  the kernel cannot rebuild is refused with the reason. The message names the
  PID and the descriptor.

  Ferry waits for the killed processes to be reaped (up to 3 s), so that
  their PIDs are free for a restore when ferry returns.

  With CONTAINER instead of --pid, ferry finds the container through its
  runtime's state (runc state CONTAINER), freezes its cgroup (the v1 freezer
  or v2 cgroup.freeze), stops every thread in it while it is frozen, thaws it
  under ptrace, and checkpoints the tree under the container's init, with the
  bundle's config.json in the image. Without --leave-running the container is
  then killed and deleted from the runtime, as runc checkpoint does. Refused:
  a container that is paused or not running, one with a user or time
  namespace, a process in its cgroup that is not under its init.

  Must run as root: ferry checks first, and otherwise says "must run as root
  (ptrace and clone3 with a chosen PID need it)" and exits with status 1.

OPTIONS
  --pid PID
      The process to checkpoint: a process ID (not a thread ID), a positive
      integer.
  CONTAINER
      Checkpoint this container instead (a container id of the runtime).
  --runtime R
      The container's runtime: runc (default), crun, or a path. Found in PATH
      or /usr/local/sbin, /usr/local/bin, /usr/sbin, /usr/bin, /sbin, /bin.
  --root DIR
      The runtime's state directory (its --root), if not its default.
  --image PATH, --image-path PATH
      Where to write the image (created with mode 0600, overwritten if it
      exists). - writes the tar stream to standard output (not a terminal);
      then nothing else goes to standard output and the result line goes to
      standard error.
  --leave-running
      Let the process run on after the checkpoint instead of killing it.
  --sign-key FILE
      Sign the image with the Ed25519 private key in FILE (PKCS#8 PEM, as
      ferry keygen writes PREFIX.key): a signature of the manifest, which
      lists every entry with its sha256, is stored right after it. The key is
      read before the process is touched. restore --trust then accepts the
      image; ferry inspect shows the signer. Without it (and without
      image.sign_key), the image is signed with this machine's host key
      (image.host_key, default /var/lib/ferry/host.key, made root-only by
      the first checkpoint), which every restore here trusts.
  --tcp-established, --ext-unix-sk, --shell-job, --file-locks
      As in runc: allow established TCP connections, unix sockets whose peer
      is outside the tree, a terminal shared with the shell outside the tree,
      and file locks. Without the flag, a descriptor that needs it is refused
      with a message naming the flag. Give restore the same flags.
      With --tcp-established, the packets of the tree's connections are
      dropped from before they are read until restore (the network lock: an
      nftables table, nft(8) from the nftables package), so that no peer sees
      a reset; --leave-running or a failed checkpoint removes it at once.
  --tcp-close
      As in CRIU: TCP connections are neither kept nor locked, only their
      addresses; restore --tcp-close gives the program closed sockets in
      their place (a read returns 0, a write fails with EPIPE).
  --external KEY
      A descriptor whose file is also held outside the tree (KEY as the
      refusal names it: pipe:[INODE], socket:[INODE], an absolute path) is
      taken anyway and marked external in the image: a restore must then be
      handed a descriptor for it with --inherit-fd. Repeatable.
  --skip-in-flight
      Leave out what is in flight and cannot be put back (refused without
      it), with a warning in the log and in the result's "warnings":
      connections a TCP listener has not accepted yet (a restored listener
      comes back without them; their clients see a reset once the original
      is killed), and messages queued on a netlink socket (replies and
      notifications the kernel sent; a program waiting for a reply dropped
      so waits forever).
  --drop-queued-events
      Leave out the events queued in an inotify or fanotify instance (they
      are refused without it: they cannot be read without consuming them,
      nor queued again), with a warning naming the descriptor. The restored
      instance starts with an empty queue; --leave-running keeps the
      original's. A fanotify group of a content class is still refused: its
      queue may hold permission events whose accessors wait for an answer.
  --json
      Print the result as one JSON object instead of a sentence:
      {"pids":[PID],"imageBytes":N,"pagesBytes":N,"frozenMs":N,"totalMs":N,
      "reapWaitMs":N}, with "warnings":[LINE...] when the checkpoint went on
      despite something. reapWaitMs (absent with --leave-running or a
      container in a pid namespace of its own) is the part of totalMs spent
      after the kill waiting for the killed processes to be reaped by their
      parents, about 3 s at most.
      Without --json each warning is also a "warning:" line on stderr.

${GLOBAL_OPTIONS}

OUTPUT
  On success, one line on standard output (standard error with --image -):
      checkpointed pid 4242 to /tmp/app.tar: 12.3 MiB, frozen 8 ms, total 40 ms
  "frozen" is how long the process was stopped; "total" the whole command,
  followed by "(N ms of it waiting for the killed processes to be reaped)"
  when that wait took 10 ms or more: ferry waits (about 3 s at most) after
  the kill until their parents have reaped them, so that their PIDs are free
  for a restore; a parent or PID 1 that reaps lazily makes that most of the
  total.
  When standard error is a terminal, a progress line is shown there while the
  image is written.

${EXIT_STATUS}

${FILES}

EXAMPLES
  Checkpoint process 4242 into a file; the process is killed:
      ferry checkpoint --pid 4242 --image /var/tmp/app.tar
  Take a copy and let it run on:
      ferry checkpoint --pid 4242 --image /var/tmp/app.tar --leave-running
  Move it to another machine with the same kernel, which trusts site.pub:
      ferry checkpoint --pid 4242 --image - --sign-key /etc/ferry/site.key |
          ssh node2 ferry restore --image - --trust /etc/ferry/site.pub
  Keep a log of the details:
      ferry checkpoint --pid 4242 --image /var/tmp/app.tar \\
          --log-file /var/log/ferry.log --log-level debug

SEE ALSO
  ferry help restore, ferry help inspect; docs/cli.md in the package.`,

  restore: `NAME
  ferry restore - bring a process tree back from an image

SYNOPSIS
  ferry restore --image PATH [--pid-file FILE] [--json] [--trust PATH]
                [--max-creds SPEC] [--manage-cgroups[=MODE]]
                [--allow-changed-files] [GLOBAL OPTIONS]
  ferry restore CONTAINER --image PATH [--bundle DIR] [--detach]
                [--runtime R] [--root DIR] [--pid-file FILE] [...]

DESCRIPTION
  Verifies the whole image first: its structure, the sha256 of every entry,
  that this machine runs the same kernel build and has the CPU features
  (XSAVE) the image needs, and that every file the process had open can be
  opened again. Only then does it create every process with its original PID
  under its original parent, in its session and process group (zombies
  too, for their parents to reap), rebuild memory, threads, registers, signal
  state, timers, credentials and descriptors, and let them run. Ferry returns
  once the processes run on their own; when ferry exits, the root is adopted
  by init (or the nearest child subreaper).

  Every PID must be free: a zombie holding one gets 2 s to be reaped, any
  other process there is an error. If anything fails, every half-built
  process is killed: nothing is left running.

  With CONTAINER, the runtime builds the container from the bundle (default:
  the checkpointed container's) with ferry's restore stub as its init; ferry
  then rebuilds the image's processes inside it, with their pids in the
  container's pid namespace, and starts them. The runtime knows the container
  afterwards (state, ps, kill, delete work). The id may be the checkpointed
  one or a new one; it must not exist yet. The bundle must run the same
  program with the same namespaces. Without --detach ferry stays until the
  container stops, like runc restore. If anything fails, the container is
  deleted again.

  Must run as root: ferry checks first, and otherwise says "must run as root
  (ptrace and clone3 with a chosen PID need it)" and exits with status 1.

OPTIONS
  --image PATH, --image-path PATH
      The image to restore. - reads the tar stream from standard input (not a
      terminal); it is spooled to image.work_dir of the configuration
      (default /var/tmp) so that it can be verified whole before anything is
      created.
  --pid-file FILE
      Write the PID of the restored process (and a newline) to FILE.
  --trust PATH
      Restore only an image signed by a trusted key: PATH is one public key
      file (SPKI PEM, as ferry keygen writes PREFIX.pub) or a directory whose
      *.pub files are the keys. Checked right after the manifest is read,
      before anything else of the image: an unsigned image or one signed by
      another key is refused with one line naming the signer. Overrides
      image.trust of the configuration; images this machine's host key
      signed are accepted too. Without either, unsigned images are
      restored, held to the untrusted default (see --max-creds); a
      signature that is present is always verified, and an image whose
      signature does not match its manifest is refused.
  --max-creds SPEC
      The most the restored processes may get. SPEC is USER[:GROUP] (a name
      from /etc/passwd and /etc/group, or numbers), then optionally
      ,caps=CAP+CAP (default: none), ,nnp, ,seccomp, ,securebits=BITS.
      Examples: nobody, 65534:65534, www-data,caps=net_bind_service. Every
      process's uids, gids, groups, capability sets, no_new_privs, seccomp,
      securebits, scheduling and oom_score_adj are held against it once the
      image is verified; one that would get more is refused before anything
      is made (EPRIVILEGE), naming the pid and the field. root allows
      anything. Without the option, an image signed by this machine's host
      key or a --trust key restores with the credentials it holds; any other
      gets no root, no gid 0 and no capabilities, whatever executable it
      names. Containers are always bounded by their bundle's config.json.
  CONTAINER, --bundle DIR, --detach, -d, --runtime R, --root DIR
      Restore as this container, built from bundle DIR, and return at once
      with --detach; the runtime and its state directory as for checkpoint.
  --tcp-established, --ext-unix-sk, --shell-job, --file-locks
      As in runc: restore established TCP connections, unix sockets whose peer
      is outside the tree, a terminal shared with the shell outside the tree,
      and file locks. Without the flag, a descriptor that needs it is refused
      with a message naming the flag. The network lock the checkpoint kept
      for the connections is removed once the restored tree runs; a restore
      that fails leaves it, for a retry.
  --tcp-close
      As in CRIU: TCP connections of the image are not restored; each comes
      back as a closed TCP socket (a read returns 0, a write fails with
      EPIPE). Needed for an image checkpointed with --tcp-close.
  --inherit-fd fd[N]:KEY
      Use this ferry's descriptor N in place of the image's file KEY (its
      name at checkpoint: pipe:[INODE], socket:[INODE], a path), for every
      descriptor of the tree that held it. Required for each file the
      checkpoint marked --external. Repeatable; e.g. 3<&0 in the shell and
      --inherit-fd fd[3]:pipe:[12345].
  --manage-cgroups[=MODE], --manage-cgroups-mode MODE
      Put every process and thread back into the cgroups the checkpoint
      recorded, in each hierarchy mounted here (v1 and v2). MODE: ignore
      (the default without the option: they stay in ferry's cgroups); soft
      (the default of a bare --manage-cgroups): a missing cgroup is made and
      given the recorded limits, weights and flags (memory, pids, cpu,
      cpuset, hugetlb, blkio/io weights; not per-device ones), existing ones
      keep theirs, what cannot be done is a warning; full: the limits of
      existing cgroups are set too; strict: full, and what soft warns about
      fails the restore. An image no trusted key signed may go only into
      ferry's own cgroups or below them, and only with soft. Cgroups the
      restore made are removed if it fails. Not for a container.
  --allow-changed-files
      Restore even if a regular file the processes had open has another size
      or modification time than at the checkpoint (a warning on standard
      error for each). Without it, the restore fails naming the file and what
      changed, before any process is created. A file only appended to (a log
      opened write-only with O_APPEND) may grow meanwhile without this flag.
      A directory read part of the way that is not the same directory any
      more (another inode at its path) is refused too; with this flag it is
      read again from its start.
  --json
      Print the result as one JSON object instead of a sentence:
      {"pid":PID,"pids":[PID],"hostPids":{"PID":HOSTPID},"pagesBytes":N,
      "verifyMs":N,"restoreMs":N,"totalMs":N}. pids are as the processes
      see them (inside a container's pid namespace), hostPids maps each
      running one to its PID on the host, pid is the root's host PID;
      durations are in ms, to a tenth; with "warnings":[LINE...] when the
      restore went on despite something (--manage-cgroups=soft, full).

${GLOBAL_OPTIONS}

OUTPUT
  On success, one line on standard output (here folded in two):
      restored pid 4242 from /var/tmp/app.tar: 12.3 MiB of memory,
      verify 5 ms, restore 9 ms, total 20 ms
  "verify" is checking the image, "restore" building the process until it
  runs, "total" the whole command. When standard error is a terminal, a
  progress line is shown there while the image is verified.

${EXIT_STATUS}

${FILES}

EXAMPLES
  Restore from a file and note the PID:
      ferry restore --image /var/tmp/app.tar --pid-file /run/app.pid
  Restore what another machine sends:
      ssh node1 ferry checkpoint --pid 4242 --image - | ferry restore --image -
  Restore only images signed by a key of /etc/ferry/trusted:
      ferry restore --image /var/tmp/app.tar --trust /etc/ferry/trusted

SEE ALSO
  ferry help checkpoint, ferry help inspect, ferry help keygen; docs/cli.md
  in the package.`,

  migrate: `NAME
  ferry migrate - move a running process tree or container to another node

SYNOPSIS
  ferry migrate --pid PID --to DEST [--sign-key FILE] [--lazy]
                [--pre-copy | --no-pre-copy] [--max-rounds N]
                [--tcp-established] [...] [--json] [GLOBAL OPTIONS]
  ferry migrate CONTAINER --to DEST [--runtime R] [--root DIR]
                [--target-id ID] [--target-bundle DIR] [--target-root DIR]
                [--sign-key FILE] [--lazy] [--json] [GLOBAL OPTIONS]
  DEST is tcp://HOST:PORT with --key FILE, or ssh://[USER@]HOST[:PORT]
  [--ssh-config FILE].

DESCRIPTION
  Moves the process tree rooted at PID, or the OCI container CONTAINER, to
  another node, in one command. Plain trees keep their PIDs; a container
  is made again by the runtime there (runc create), from a bundle of that
  node, under the same id or --target-id.

  tcp://HOST:PORT reaches ferry receive --listen. Both nodes hold the same
  key FILE; it authenticates each side to the other and keys the TLS
  channel (TLS 1.2, ECDHE-PSK-CHACHA20-POLY1305).

  ssh://[USER@]HOST[:PORT] runs "ferry receive --stdio" there through this
  machine's ssh, with its own authentication (keys, agent, known_hosts,
  ~/.ssh/config, or --ssh-config), in batch mode: no prompt. ssh
  authenticates and encrypts; no --key then.

  Pre-copy (the default, for a process tree and a container alike):
  while it runs, its memory is sent in rounds, each only the pages written
  since the round before (tracked with userfaultfd write-protection), until
  little changes; then the tree is stopped and the image sent names the
  pages the target holds instead of sending them again. A process with a
  userfaultfd of its own is refused (use --no-pre-copy); a kernel that
  cannot track writes gets stop and copy.

  Lazy pages (--lazy): the target lets the tree run before its anonymous
  memory is written, and copies each page in from the image it holds on
  first touch (userfaultfd), the rest in the background, each checked
  against the image's checksums first. The target holds the whole image
  before the tree is stopped here for good, with pre-copy or without:
  pages are never fetched from this node after the kill. A page that fails
  the check kills the tree there (and removes its container), and it is
  restored here (status 1). ferry migrate exits 0 once the target holds
  every page in the tree.

  Nothing is touched before the target has answered. The tree is stopped
  and its image streamed to the target (and copied into image.work_dir
  here). The tree stays stopped, not killed, until the target says the
  image is whole and checked; only then is it killed, and the target
  restores it. Exit status 0 means it runs there; a container is deleted
  here (it stays in the runtime, stopped, until then).

  Every failure before the kill leaves the tree running here as it was. If
  the target's restore fails after the kill, the copy is restored here and
  ferry migrate says so (status 1). If the target falls silent after the
  kill, whether the tree runs there is unknown: the copy is kept in
  image.work_dir and the line says how to restore it.

  The image is signed with --sign-key, else image.sign_key, else this
  machine's host key: the target restores it with its credentials only when
  it trusts that key (ferry receive --trust), else within --max-creds. A
  container is bounded by its bundle's config.json on the target.

OPTIONS
  --pid PID
      The root of the process tree to move.
  CONTAINER
      The id of the container to move instead.
  --to tcp://HOST:PORT | ssh://[USER@]HOST[:PORT]
      Where ferry receive listens ([::1] for IPv6), or the node to run
      ferry receive --stdio on through ssh.
  --key FILE
      tcp:// only. The pre-shared key: at least 32 random bytes, raw or hex,
      in a file of root's that no one else can read or write (mode 0600);
      the same file on both nodes. Make one with:
      (umask 077; openssl rand -hex 32 > FILE)
  --ssh-config FILE
      ssh:// only. The ssh configuration to use (ssh -F FILE).
  --runtime R, --root DIR
      The container's runtime here (runc, crun or a path; default runc)
      and its state directory.
  --target-id ID
      The container's id on the target (default: the same id).
  --target-bundle DIR
      Its bundle on the target (default: the one it has here). The target
      takes it only if root owns it and no one else can write it.
  --target-root DIR
      The runtime's state directory on the target (default: its default).
  --sign-key FILE
      Sign the image with this Ed25519 private key (ferry keygen); the
      target lists its .pub in --trust.
  --pre-copy, --no-pre-copy
      Send memory in rounds while the tree runs (the default, for a
      container too), or stop it for the whole transfer (stop and copy).
  --max-rounds N
      At most N pre-copy rounds (1-64, default 8); they also end once a
      round sends at most 1 MiB or shrinks by less than a tenth.
  --lazy
      Lazy pages: the tree or container runs on the target before its
      memory is written there; with pre-copy or stop and copy.
  --tcp-established, --tcp-close, --ext-unix-sk, --shell-job,
  --file-locks, --skip-in-flight, --external KEY
      As for ferry checkpoint; the target restores with the same flags.
      With --tcp-established, a tree's connections are locked (nftables)
      from before they are read until they run on the target; the lock
      kept here after the kill is removed once they do. Their local
      addresses must be this tree's on the target too: move the addresses
      with the workload (a container's namespace, or a service address the
      peers reach on the target once ferry migrate returns).
  --json
      One JSON object per phase on standard output:
      {"phase":"round","round":N,"pages":N,"bytes":N,"dirtyRate":N,"ms":N}
      per pre-copy round (dirtyRate: bytes written per second),
      {"phase":"checkpoint","pid":N,"imageBytes":N,"ms":N},
      {"phase":"transfer","bytes":N,"verifyMs":N},
      {"phase":"restore","pid":N,"pids":[...],"restoreMs":N},
      {"phase":"filled","pid":N,"pages":N,"faults":N,"fillMs":N} with
      --lazy (pages served after the start, faults among them),
      {"phase":"done","pid":N,"downtimeMs":N,"totalMs":N,"rounds":N,
      "roundBytes":N,"refBytes":N,"phases":{...}} (refBytes: image bytes
      the target had from the rounds; phases: where the downtime went,
      ms: checkpointMs, verifyMs, killMs (of it reapWaitMs, when the kill
      waited for the source's PIDs to be reaped), restoreMs, and the
      target's).

${GLOBAL_OPTIONS}

OUTPUT
  One line on standard output:
      migrated pid 4242 to tcp://node2:7070: 1.2 MiB, 3 pre-copy rounds
      (70.1 MiB), downtime 95 ms, total 160 ms
      migrated container web1 as web2 (3 processes) to ssh://node2: ...
  On a terminal, a progress line shows each round, the dirty rate and the
  predicted downtime.

${EXIT_STATUS}

EXAMPLES
  On node2:  ferry receive --listen 0.0.0.0:7070 --key /etc/ferry/migrate.key \\
                 --trust /etc/ferry/site.pub
  On node1:  ferry migrate --pid 4242 --to tcp://node2:7070 \\
                 --key /etc/ferry/migrate.key --sign-key /etc/ferry/site.key
  Over ssh, a runc container to a new id and bundle:
      ferry migrate web1 --to ssh://root@node2 --target-id web2 \\
          --target-bundle /srv/bundles/web2

SEE ALSO
  ferry help receive; docs/migration.md in the package.`,

  receive: `NAME
  ferry receive - take process trees and containers that ferry migrate sends

SYNOPSIS
  ferry receive --listen HOST:PORT --key FILE (--trust KEYS | --max-creds SPEC)
                [--once] [--runtime R] [--json] [GLOBAL OPTIONS]
  ferry receive --stdio (--trust KEYS | --max-creds SPEC) [--runtime R]
                [--json] [GLOBAL OPTIONS]

DESCRIPTION
  Listens on HOST:PORT for ferry migrate. A peer that does not hold the same
  key FILE fails the TLS handshake and is refused before anything it sends
  is read (one line on standard error; the receiver goes on). For each
  authenticated sender: the image is spooled into a private directory of
  image.work_dir, verified and checked as ferry restore checks it, then the
  sender is told to stop the source, and the tree is restored with its
  original PIDs. Every failure removes what was made, and the sender learns
  it. One migration at a time; another sender meanwhile is told to retry.

  A container is made with the runtime (--runtime, default runc) under the
  id, from the bundle and in the state directory the sender names; the
  bundle and directory must be root's and writable by no one else, and the
  id free, or the sender is refused before its image is read.

  A sender with --lazy: the tree is let go before its anonymous memory is
  written; this ferry receive serves each page on first touch and the rest
  in the background (checked against the image first), and finishes the
  migration only once every page is in. If it dies meanwhile, the tree is
  killed (a watchdog holds the pages' descriptors), never left on zeros.

  --stdio serves one migration on standard input and output instead: ferry
  migrate --to ssh:// runs it so, and ssh has authenticated the sender.
  Messages and --json records go to standard error then. An authorized_keys
  entry can pin the command: command="ferry receive --stdio --trust ...".

  The key says who may send; it does not make an image trusted. An image
  keeps the credentials it holds only when signed by a key of --trust (or
  image.trust, or this machine's host key); --max-creds bounds any image.
  ferry receive refuses to start without --trust, image.trust or --max-creds.

OPTIONS
  --listen HOST:PORT
      Address and port to listen on; port 0 picks a free one (printed).
  --key FILE
      The pre-shared key, as for ferry migrate. Required with --listen.
  --stdio
      Serve one migration on standard input and output (run by ssh).
  --runtime R
      What makes a migrated container here: runc (default), crun or a path.
  --trust PATH
      The senders' public keys (a .pub file or a directory of them),
      overriding image.trust.
  --max-creds USER[:GROUP][,caps=CAP+CAP][,nnp][,seccomp][,securebits=BITS]
      The most a migrated process may get, as for ferry restore.
  --once
      Take one authenticated migration, then exit: status 0 when it runs
      here, 1 when it failed.
  --json
      One JSON object per phase on standard output: {"phase":"listen",
      "host":H,"port":N}, then per migration {"phase":"transfer",...},
      {"phase":"restore","pid":N,"phases":{...},...}, with --lazy
      {"phase":"filled","pages":N,"faults":N,"fillMs":N}, then
      {"phase":"done","pid":N,"downtimeMs":N}; a failed migration's error
      object.

${GLOBAL_OPTIONS}

OUTPUT
      listening on 10.0.0.2:7070
      restored pid 4242 from 10.0.0.1:50122, downtime 95 ms

${EXIT_STATUS}

EXAMPLES
  ferry receive --listen 0.0.0.0:7070 --key /etc/ferry/migrate.key \\
      --trust /etc/ferry/trusted

SEE ALSO
  ferry help migrate, ferry help restore; docs/migration.md and
  docs/security.md in the package.`,

  inspect: `NAME
  ferry inspect - verify an image and show what it holds

SYNOPSIS
  ferry inspect --image PATH [--json] [--verbose] [GLOBAL OPTIONS]

DESCRIPTION
  Verifies the image as restore does (structure, the signature if it has one,
  and the sha256 of every entry), then describes it: the manifest (format,
  ferry version, date, kernel and CPU features of the machine it was taken
  on, root PID, entries and size), the signer (the fingerprint of the key
  that signed it, SHA256:..., or "unsigned"), each process (PID, parent,
  name, executable, working directory, threads), its memory summed up by kind
  of area (areas, size mapped, bytes stored; every area with its addresses,
  permissions and name with --verbose) and its descriptors (number, kind, file,
  FD_CLOEXEC, and which other descriptors share the same open file). Nothing
  is created. Root is not needed to inspect, but ferry writes images with
  mode 0600, so one that root made is readable by root only.

OPTIONS
  --image PATH, --image-path PATH
      The image to read; - reads it from standard input (spooled to
      image.work_dir).
  --json
      Print the report as JSON instead of text: {"image", "manifest",
      "signer" (null when unsigned), "entries", "totalBytes", "tasks":
      [{"pid", "ppid", "comm", "exe", "cwd", "threads", "pagesBytes",
      "vmas": [...], "fds": [...]}], "files": [...]}.
  --verbose
      In the text report, list every memory area (start-end, permissions,
      kind, bytes stored, file or name) instead of one line per kind.

${GLOBAL_OPTIONS}

${EXIT_STATUS}

EXAMPLES
  ferry inspect --image /var/tmp/app.tar
  ferry inspect --image /var/tmp/app.tar --json | jq '.tasks[0].fds'

SEE ALSO
  ferry help checkpoint; docs/image-format.md in the package.`,

  keygen: `NAME
  ferry keygen - make a key pair to sign images with

SYNOPSIS
  ferry keygen --out PREFIX [--json] [GLOBAL OPTIONS]

DESCRIPTION
  Makes a new Ed25519 key pair: the private key goes to PREFIX.key (PKCS#8
  PEM, mode 0600), for checkpoint --sign-key; the public key to PREFIX.pub
  (SPKI PEM), for restore --trust and image.trust of the configuration on
  the machines that restore. Neither file may exist: a key is never
  overwritten. Prints the key's fingerprint, SHA256: and the base64 of the
  sha256 of the raw public key, which restore and inspect name a signer by.
  No root is needed.

OPTIONS
  --out PREFIX
      Where the two files go: PREFIX.key and PREFIX.pub. The directory must
      exist.
  --json
      Print {"keyId":"SHA256:...","privateKey":"PREFIX.key",
      "publicKey":"PREFIX.pub"} instead of a sentence.

${GLOBAL_OPTIONS}

OUTPUT
  One line on standard output (here folded in two):
      made key SHA256:3Hq...: private /etc/ferry/site.key (mode 0600,
      for --sign-key), public /etc/ferry/site.pub (for --trust)

${EXIT_STATUS}

EXAMPLES
  ferry keygen --out /etc/ferry/site
  mkdir -p /etc/ferry/trusted && cp /etc/ferry/site.pub /etc/ferry/trusted/

SEE ALSO
  ferry help checkpoint, ferry help restore; docs/security.md in the
  package.`,

  check: `NAME
  ferry check - what works on this host, what does not, and what to do

SYNOPSIS
  ferry check [--json] [GLOBAL OPTIONS]

DESCRIPTION
  Probes what checkpoint and restore use, on ferry's own process only (no
  workload is touched), and prints one line per check: its status, its name
  and what was found; a problem line says what to do. Statuses:
      ok    works
      fail  checkpoint and restore cannot work until it is fixed
      warn  a feature will not work (named on the line); the rest does
      info  a fact of this host (installed runtimes, migration support)
  The checks, in order: node (20 or later); root (root with CAP_SYS_PTRACE
  and CAP_SYS_ADMIN); sys_resource (CAP_SYS_RESOURCE, to raise hard limits
  and pipe sizes as recorded); addon (the native addon and the restore stub
  of this package); ptrace (Yama's ptrace_scope below 3); checkpoint_restore
  (CONFIG_CHECKPOINT_RESTORE); clone3_set_tid (PIDs given back, kernel 5.5+);
  kcmp; pidfd_getfd; openat2 (restore's path confinement); timer_ids
  (PR_TIMER_CREATE_RESTORE_IDS, for POSIX timers, kernel 6.15+); tcp_repair
  (--tcp-established); host_key (image.host_key root's alone); work_dir
  (image.work_dir writable, for --image -); cgroups (the layout, and the
  freezer containers are frozen with); runc (its version, and whether its
  checkpoint calls ferry's criu program); crun (refused on a host that is not
  cgroup v2 only); podman (its version and default runtime); userfaultfd;
  soft_dirty; time_ns. The last line sums up. Root is needed for a full
  report (probes that need it fail without it).

OPTIONS
  --json
      Print {"ok":BOOL,"checks":[{"name":"root","status":"ok","detail":
      "..."},...]} instead of the lines.

${GLOBAL_OPTIONS}

EXIT STATUS
  0   checkpoint and restore can work here (warnings aside)
  1   a check marked fail failed
  2   bad usage

EXAMPLES
  ferry check
  ferry check --json | jq -r '.checks[] | select(.status != "ok") | .detail'

SEE ALSO
  ferry help checkpoint, ferry help restore; docs/cli.md in the package.`,

  demo: `NAME
  ferry demo - checkpoint and restore a counting process

SYNOPSIS
  ferry demo [--json] [GLOBAL OPTIONS]

DESCRIPTION
  Shows what ferry does, on a built-in example. Starts build/workloads/counter
  from the package (it prints "tick N" every 100 ms, counting in its own
  memory, into a log file), waits for 5 ticks, checkpoints it into a temporary
  image (which kills it), waits until it is reaped, restores it, watches it
  for one second, and shows that it has the same PID and counts on from where
  it stopped. Prints the timings (frozen, checkpoint, restore) and the image
  size. Whatever happens, the counter is killed at the end and the temporary
  files (in $TMPDIR, default /tmp) are removed. Must run as root.

OPTIONS
  --json
      Print one JSON object instead of the narrated run: {"pid", "imageBytes",
      "frozenMs", "checkpointMs", "restoreMs", "verifyMs", "ticksBefore",
      "ticksAfter"}.

${GLOBAL_OPTIONS}

${EXIT_STATUS}
  The demo fails (status 1) if the restored counter has another PID, prints
  nothing, or does not continue with the next tick.

EXAMPLES
  ferry demo
  ferry demo --log-file /tmp/ferry-demo.log --log-level debug`,

  version: `NAME
  ferry version - print the version of ferry

SYNOPSIS
  ferry version [--json] [GLOBAL OPTIONS]
  ferry --version

DESCRIPTION
  Prints "ferry X.Y.Z" on standard output.

OPTIONS
  --json
      Print {"version":"X.Y.Z"} instead.

${GLOBAL_OPTIONS}

${EXIT_STATUS}

EXAMPLES
  ferry version`,
};

/** The page for `topic` ('help' and undefined give the overview). */
export function helpPage(topic: Command | undefined): string {
  return topic === undefined || topic === 'help' ? HELP.ferry : HELP[topic];
}
