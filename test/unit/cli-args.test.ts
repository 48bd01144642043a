/** Command-line parsing: every command's forms, aliases, and the usage errors (pure functions). */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  jsonErrorStream, parseCheckpointArgs, parseDemoArgs, parseHelpArgs, parseInspectArgs, parseKeygenArgs, parseMigrateArgs, parseReceiveArgs,
  parseRestoreArgs, parseVersionArgs, PID_MAX_LIMIT, UsageError, wantsHelp,
} from '../../src/cli/args.js';
import { formatUrl, parseUrl } from '../../src/migrate/endpoint.js';

/** Asserts that `fn` throws a UsageError of `command` with exactly `message` (or matching it). */
function usage(fn: () => unknown, command: string, message: string | RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof UsageError, String(err));
    assert.equal(err.command, command);
    assert.ok(!err.message.includes('\n'), `one line: ${JSON.stringify(err.message)}`);
    if (typeof message === 'string') assert.equal(err.message, message);
    else assert.match(err.message, message);
    return true;
  });
}

const NO_FLAGS = { tcpEstablished: false, tcpClose: false, extUnixSk: false, shellJob: false, fileLocks: false };

describe('ferry checkpoint arguments', { timeout: 30_000 }, () => {
  it('parses the plain form', () => {
    assert.deepEqual(parseCheckpointArgs(['--pid', '1234', '--image', '/tmp/x.tar']),
      { pid: 1234, image: '/tmp/x.tar', leaveRunning: false, json: false, files: NO_FLAGS });
  });

  it('parses the runc file flags', () => {
    assert.deepEqual(parseCheckpointArgs(['--pid', '1', '--image', 'x', '--tcp-established', '--ext-unix-sk', '--shell-job', '--file-locks']).files,
      { tcpEstablished: true, tcpClose: false, extUnixSk: true, shellJob: true, fileLocks: true });
    assert.deepEqual(parseRestoreArgs(['--image', 'x', '--tcp-established']).files, { ...NO_FLAGS, tcpEstablished: true });
    assert.deepEqual(parseCheckpointArgs(['--pid', '1', '--image', 'x', '--tcp-close']).files, { ...NO_FLAGS, tcpClose: true });
    assert.deepEqual(parseRestoreArgs(['--image', 'x', '--tcp-close']).files, { ...NO_FLAGS, tcpClose: true });
    usage(() => parseCheckpointArgs(['--pid', '1', '--image', 'x', '--file-locks=yes']), 'checkpoint', '--file-locks takes no value');
  });

  it('parses --skip-in-flight (checkpoint only)', () => {
    assert.deepEqual(parseCheckpointArgs(['--pid', '1', '--image', 'x', '--skip-in-flight']).files, { ...NO_FLAGS, skipInFlight: true });
    usage(() => parseRestoreArgs(['--image', 'x', '--skip-in-flight']), 'restore', 'unknown option --skip-in-flight');
  });

  it('parses --drop-queued-events (checkpoint only)', () => {
    assert.deepEqual(parseCheckpointArgs(['--pid', '1', '--image', 'x', '--drop-queued-events']).files, { ...NO_FLAGS, dropQueuedEvents: true });
    usage(() => parseCheckpointArgs(['--pid', '1', '--image', 'x', '--drop-queued-events=yes']), 'checkpoint', '--drop-queued-events takes no value');
    usage(() => parseRestoreArgs(['--image', 'x', '--drop-queued-events']), 'restore', 'unknown option --drop-queued-events');
  });

  it('parses every option, runc alias and = form, and the global options', () => {
    assert.deepEqual(parseCheckpointArgs([
      '--pid=7', '--image-path', '-', '--leave-running', '--json',
      '--log-level', 'debug', '--log-file', '/var/log/f.log', '--config', '/etc/f.toml',
    ]), {
      pid: 7, image: '-', leaveRunning: true, json: true, logLevel: 'debug', logFile: '/var/log/f.log', config: '/etc/f.toml', files: NO_FLAGS,
    });
    assert.equal(parseCheckpointArgs(['--image', 'a', '--pid', '007']).pid, 7);
    assert.equal(parseCheckpointArgs(['--pid', String(PID_MAX_LIMIT), '--image', 'a']).pid, PID_MAX_LIMIT);
    assert.equal(parseCheckpointArgs(['--pid', '1', '--image', 'a', '--log-file', '']).logFile, '');
  });

  it('rejects a missing or malformed --pid', () => {
    usage(() => parseCheckpointArgs(['--image', 'x']), 'checkpoint', '--pid is required (the process to checkpoint), or a container id');
    usage(() => parseCheckpointArgs(['--pid', 'abc', '--image', 'x']), 'checkpoint', '--pid needs a positive integer, got "abc"');
    usage(() => parseCheckpointArgs(['--pid', '0', '--image', 'x']), 'checkpoint', '--pid needs a positive integer, got "0"');
    usage(() => parseCheckpointArgs(['--pid=-5', '--image', 'x']), 'checkpoint', '--pid needs a positive integer, got "-5"');
    usage(() => parseCheckpointArgs(['--pid', '1.5', '--image', 'x']), 'checkpoint', '--pid needs a positive integer, got "1.5"');
    usage(() => parseCheckpointArgs(['--pid', '', '--image', 'x']), 'checkpoint', '--pid needs a positive integer, got ""');
    usage(() => parseCheckpointArgs(['--pid', '99999999999', '--image', 'x']), 'checkpoint',
      `--pid 99999999999 is above the largest PID Linux allows (${PID_MAX_LIMIT})`);
    usage(() => parseCheckpointArgs(['--pid', '-5', '--image', 'x']), 'checkpoint',
      '--pid needs a value (for a value that starts with "-", write --pid=VALUE)');
    usage(() => parseCheckpointArgs(['--image', 'x', '--pid']), 'checkpoint', '--pid needs a value');
  });

  it('rejects a missing or doubled --image', () => {
    usage(() => parseCheckpointArgs(['--pid', '1']), 'checkpoint', '--image is required (a path, or - for standard output)');
    usage(() => parseCheckpointArgs(['--pid', '1', '--image', '']), 'checkpoint', '--image needs a path (or - for standard output), got ""');
    usage(() => parseCheckpointArgs(['--pid', '1', '--image', 'x', '--image-path', 'y']), 'checkpoint',
      '--image and --image-path are the same option: give one');
  });

  it('rejects unknown options, stray arguments and values on flags', () => {
    usage(() => parseCheckpointArgs(['--pid', '1', '--image', 'x', '--frob']), 'checkpoint', 'unknown option --frob');
    usage(() => parseCheckpointArgs(['--pid', '1', '--image', 'x', '-x']), 'checkpoint', 'unknown option -x');
    usage(() => parseCheckpointArgs(['--pid', '1', '--image', 'x', 'extra']), 'checkpoint', 'give --pid or a container id, not both');
    usage(() => parseCheckpointArgs(['a', 'b', '--image', 'x']), 'checkpoint', 'unexpected argument "b" (one container id at most)');
    usage(() => parseCheckpointArgs(['--pid', '1', '--image', 'x', '--runtime', 'crun']), 'checkpoint', '--runtime needs a container id (ferry checkpoint CONTAINER …)');
    assert.deepEqual(parseCheckpointArgs(['c1', '--image', 'x', '--root', '/r']).container, { id: 'c1', runtime: 'runc', root: '/r' });
    assert.deepEqual(parseRestoreArgs(['c1', '--image', 'x', '--bundle', '/b', '-d']).container, { id: 'c1', runtime: 'runc', detach: true, bundle: '/b' });
    usage(() => parseCheckpointArgs(['--pid', '1', '--image', 'x', '--leave-running=yes']), 'checkpoint', '--leave-running takes no value');
    usage(() => parseCheckpointArgs(['--pid', '1', '--image', 'x', '--log-level', 'loud']), 'checkpoint',
      '--log-level needs one of trace, debug, info, warn, error, fatal, silent, got "loud"');
    usage(() => parseCheckpointArgs(['--pid', '1', '--image', 'x', '--config', '']), 'checkpoint', '--config needs a file, got ""');
    // restore's option is not checkpoint's
    usage(() => parseCheckpointArgs(['--pid', '1', '--image', 'x', '--pid-file', 'p']), 'checkpoint', 'unknown option --pid-file');
  });
});

describe('ferry restore, inspect, demo, version and help arguments', { timeout: 30_000 }, () => {
  it('parses restore', () => {
    assert.deepEqual(parseRestoreArgs(['--image', '/tmp/x.tar']), { image: '/tmp/x.tar', json: false, files: NO_FLAGS });
    assert.deepEqual(parseRestoreArgs(['--image-path', '-', '--pid-file', '/run/x.pid', '--json']),
      { image: '-', pidFile: '/run/x.pid', json: true, files: NO_FLAGS });
    usage(() => parseRestoreArgs([]), 'restore', '--image is required (a path, or - for standard input)');
    usage(() => parseRestoreArgs(['--image', 'x', '--pid-file', '']), 'restore', '--pid-file needs a file, got ""');
    usage(() => parseRestoreArgs(['--image', 'x', '--pid', '1']), 'restore', 'unknown option --pid');
    usage(() => parseRestoreArgs(['--image', 'x', '--leave-running']), 'restore', 'unknown option --leave-running');
  });

  it('parses inspect', () => {
    assert.deepEqual(parseInspectArgs(['--image', 'a.tar', '--json']), { image: 'a.tar', json: true, verbose: false });
    assert.deepEqual(parseInspectArgs(['--image', 'a.tar', '--log-level', 'trace']), { image: 'a.tar', json: false, verbose: false, logLevel: 'trace' });
    assert.deepEqual(parseInspectArgs(['--image', 'a.tar', '--verbose']), { image: 'a.tar', json: false, verbose: true });
    usage(() => parseInspectArgs(['--json']), 'inspect', '--image is required (a path, or - for standard input)');
  });

  it('parses --sign-key, --trust and keygen', () => {
    assert.deepEqual(parseCheckpointArgs(['--pid', '1', '--image', 'x', '--sign-key', '/k/site.key']),
      { pid: 1, image: 'x', leaveRunning: false, signKey: '/k/site.key', json: false, files: NO_FLAGS });
    assert.equal(parseCheckpointArgs(['c1', '--image', 'x', '--sign-key=k.key']).signKey, 'k.key');
    usage(() => parseCheckpointArgs(['--pid', '1', '--image', 'x', '--sign-key', '']), 'checkpoint', '--sign-key needs a private key file (ferry keygen writes one), got ""');
    usage(() => parseCheckpointArgs(['--pid', '1', '--image', 'x', '--sign-key']), 'checkpoint', '--sign-key needs a value');
    usage(() => parseRestoreArgs(['--image', 'x', '--sign-key', 'k']), 'restore', 'unknown option --sign-key');
    assert.deepEqual(parseRestoreArgs(['--image', 'x', '--trust', '/etc/ferry/trusted']),
      { image: 'x', json: false, files: NO_FLAGS, trust: '/etc/ferry/trusted' });
    usage(() => parseRestoreArgs(['--image', 'x', '--trust=']), 'restore', '--trust needs a public key file or a directory of them, got ""');
    // --manage-cgroups[=MODE], and runc's spelling --manage-cgroups-mode MODE.
    assert.equal(parseRestoreArgs(['--image', 'x']).manageCgroups, undefined);
    assert.equal(parseRestoreArgs(['--image', 'x', '--manage-cgroups']).manageCgroups, 'soft');
    assert.equal(parseRestoreArgs(['--image', 'x', '--manage-cgroups=full']).manageCgroups, 'full');
    assert.equal(parseRestoreArgs(['--image', 'x', '--manage-cgroups-mode', 'strict']).manageCgroups, 'strict');
    assert.equal(parseRestoreArgs(['--image', 'x', '--manage-cgroups-mode=ignore']).manageCgroups, 'ignore');
    usage(() => parseRestoreArgs(['--image', 'x', '--manage-cgroups=props']), 'restore', '--manage-cgroups takes ignore, soft, full, strict, got "props"');
    usage(() => parseRestoreArgs(['--image', 'x', '--manage-cgroups', '--manage-cgroups=soft']), 'restore', 'give --manage-cgroups or --manage-cgroups=MODE once');
    usage(() => parseRestoreArgs(['c1', '--image', 'x', '--manage-cgroups']), 'restore', '--manage-cgroups is for a process tree: a container\'s cgroups are its runtime\'s');
    usage(() => parseCheckpointArgs(['--pid', '1', '--image', 'x', '--manage-cgroups']), 'checkpoint', 'unknown option --manage-cgroups');
    usage(() => parseCheckpointArgs(['--pid', '1', '--image', 'x', '--trust', 'k']), 'checkpoint', 'unknown option --trust');
    assert.deepEqual(parseKeygenArgs(['--out', '/k/site']), { out: '/k/site', json: false });
    assert.deepEqual(parseKeygenArgs(['--out=k', '--json', '--log-level', 'info']), { out: 'k', json: true, logLevel: 'info' });
    usage(() => parseKeygenArgs([]), 'keygen', '--out is required (a path prefix: PREFIX.key and PREFIX.pub are written)');
    usage(() => parseKeygenArgs(['--out', '']), 'keygen', '--out needs a path prefix (PREFIX.key and PREFIX.pub are written), got ""');
    usage(() => parseKeygenArgs(['--out', 'k', 'extra']), 'keygen', 'unexpected argument "extra"');
  });

  it('parses demo and version', () => {
    assert.deepEqual(parseDemoArgs([]), { json: false });
    assert.deepEqual(parseDemoArgs(['--json', '--log-file', '/tmp/d.log']), { json: true, logFile: '/tmp/d.log' });
    usage(() => parseDemoArgs(['--pid', '1']), 'demo', 'unknown option --pid');
    assert.deepEqual(parseVersionArgs(['--json']), { json: true });
    usage(() => parseVersionArgs(['now']), 'version', 'unexpected argument "now"');
  });

  it('parses help with an optional command', () => {
    assert.deepEqual(parseHelpArgs([]), {});
    assert.deepEqual(parseHelpArgs(['restore']), { topic: 'restore' });
    assert.deepEqual(parseHelpArgs(['help']), { topic: 'help' });
    usage(() => parseHelpArgs(['frob']), 'help', 'unknown command "frob"; the commands are checkpoint, restore, migrate, receive, inspect, keygen, check, demo, version, help');
    usage(() => parseHelpArgs(['restore', 'inspect']), 'help', 'takes one command, got 2: restore inspect');
  });

  it('sees --help and -h, even on an otherwise wrong line, but not after --', () => {
    assert.equal(wantsHelp('checkpoint', ['--help']), true);
    assert.equal(wantsHelp('checkpoint', ['-h']), true);
    assert.equal(wantsHelp('checkpoint', ['--pid', 'abc', '--frob', '--help']), true);
    assert.equal(wantsHelp('restore', ['--image', 'x']), false);
    assert.equal(wantsHelp('restore', ['--image', 'x', '--', '--help']), false);
    assert.equal(wantsHelp('inspect', []), false);
  });
});

describe('external descriptors on the command line', () => {
  it('--external KEY (repeatable), as the leak error names it or with file:/unix: aliases', async () => {
    const { parseCheckpointArgs: parse } = await import('../../src/cli/args.js');
    const o = parse(['--pid', '1', '--image', 'x', '--external', 'pipe:[12]', '--external', 'unix:[34]', '--external', 'file:/var/log/a', '--external', '/tmp/b']);
    assert.deepEqual(o.files.external, ['pipe:[12]', 'socket:[34]', '/var/log/a', '/tmp/b']);
    assert.throws(() => parse(['--pid', '1', '--image', 'x', '--external', 'relative/path']), /--external "relative\/path": expected pipe:\[INODE\]/);
  });

  it('--inherit-fd fd[N]:KEY: N must be open in ferry', async () => {
    const { parseRestoreArgs: parse } = await import('../../src/cli/args.js');
    assert.deepEqual(parse(['--image', 'x', '--inherit-fd', 'fd[0]:pipe:[12]', '--inherit-fd', 'fd[2]:file:/a']).inherit, { 'pipe:[12]': 0, '/a': 2 });
    assert.throws(() => parse(['--image', 'x', '--inherit-fd', '3:pipe:[12]']), /expected fd\[N\]:KEY/);
    assert.throws(() => parse(['--image', 'x', '--inherit-fd', 'fd[9999]:pipe:[12]']), /descriptor 9999 is not open in this ferry/);
  });
});

describe('ferry migrate and ferry receive arguments', { timeout: 30_000 }, () => {
  it('parses a process over tcp:// and over ssh://', () => {
    assert.deepEqual(parseMigrateArgs(['--pid', '42', '--to', 'tcp://10.0.0.2:7070', '--key', '/k', '--json']),
      { pid: 42, to: { host: '10.0.0.2', port: 7070 }, key: '/k', json: true, files: NO_FLAGS });
    assert.deepEqual(parseMigrateArgs(['--pid', '42', '--to', 'ssh://root@node2:2222', '--ssh-config', '/c']),
      { pid: 42, to: { ssh: true, user: 'root', host: 'node2', port: 2222 }, sshConfig: '/c', json: false, files: NO_FLAGS });
    assert.deepEqual(parseMigrateArgs(['--pid', '42', '--to', 'ssh://node2']).to, { ssh: true, host: 'node2' });
    assert.deepEqual(parseMigrateArgs(['--pid', '42', '--to', 'ssh://[fd00::2]:22']).to, { ssh: true, host: 'fd00::2', port: 22 });
  });

  it('takes the file flags as checkpoint does', () => {
    const base = ['--pid', '42', '--to', 'tcp://n:1', '--key', 'k'];
    assert.deepEqual(parseMigrateArgs([...base, '--tcp-established', '--file-locks', '--skip-in-flight', '--external', 'pipe:[7]']).files,
      { ...NO_FLAGS, tcpEstablished: true, fileLocks: true, skipInFlight: true, external: ['pipe:[7]'] });
    usage(() => parseMigrateArgs([...base, '--external', 'rel/x']), 'migrate', /^--external "rel\/x": expected pipe:\[INODE\]/);
  });

  it('parses a container with its target', () => {
    assert.deepEqual(parseMigrateArgs(['web1', '--to', 'ssh://node2', '--runtime', 'crun', '--root', '/run/c',
      '--target-id', 'web2', '--target-bundle', '/srv/b', '--target-root', '/run/t']), {
      pid: 0, to: { ssh: true, host: 'node2' }, json: false, files: NO_FLAGS,
      container: { id: 'web1', runtime: 'crun', root: '/run/c', targetId: 'web2', targetBundle: '/srv/b', targetRoot: '/run/t' },
    });
    assert.deepEqual(parseMigrateArgs(['web1', '--to', 'tcp://n:1', '--key', 'k']).container, { id: 'web1', runtime: 'runc' });
  });

  it('refuses what does not fit together', () => {
    usage(() => parseMigrateArgs(['--to', 'tcp://n:1', '--key', 'k']), 'migrate', '--pid is required (the root of the process tree to move, or a container id)');
    usage(() => parseMigrateArgs(['web1', '--pid', '1', '--to', 'tcp://n:1', '--key', 'k']), 'migrate', 'give --pid or a container id, not both');
    usage(() => parseMigrateArgs(['a', 'b', '--to', 'tcp://n:1', '--key', 'k']), 'migrate', 'unexpected argument "b" (one container id at most)');
    usage(() => parseMigrateArgs(['--pid', '1', '--target-id', 'x', '--to', 'tcp://n:1', '--key', 'k']), 'migrate', '--target-id needs a container id (ferry migrate CONTAINER …)');
    usage(() => parseMigrateArgs(['w', '--target-id', 'a/b', '--to', 'tcp://n:1', '--key', 'k']), 'migrate', '--target-id "a/b" is not a container id (letters, digits, _ + . -)');
    usage(() => parseMigrateArgs(['w', '--target-bundle', 'rel', '--to', 'tcp://n:1', '--key', 'k']), 'migrate', '--target-bundle needs an absolute path on the target, got "rel"');
    usage(() => parseMigrateArgs(['--pid', '1', '--to', 'tcp://n:1']), 'migrate', '--key is required for tcp:// (the key file ferry receive was started with)');
    usage(() => parseMigrateArgs(['--pid', '1', '--to', 'ssh://n', '--key', 'k']), 'migrate', '--key is for tcp:// only: over ssh:// ssh authenticates both sides and encrypts');
    usage(() => parseMigrateArgs(['--pid', '1', '--to', 'tcp://n:1', '--key', 'k', '--ssh-config', 'c']), 'migrate', '--ssh-config is for ssh:// only');
    usage(() => parseMigrateArgs(['--pid', '1', '--to', 'ssh://-oProxyCommand=x']), 'migrate', /^--to "ssh:\/\/-oProxyCommand=x" is not ssh:\/\/\[USER@\]HOST\[:PORT\]/);
    usage(() => parseMigrateArgs(['--pid', '1', '--to', 'ssh://-l@n']), 'migrate', /is not ssh:\/\//);
    usage(() => parseMigrateArgs(['--pid', '1', '--to', 'ssh://n:0']), 'migrate', '--to port 0 of "ssh://n:0" is not a TCP port (1-65535)');
    usage(() => parseMigrateArgs(['--pid', '1', '--to', 'http://n:1']), 'migrate', /^--to http:\/\/ is not supported: write tcp:\/\/HOST:PORT/);
  });

  it('parses receive --listen and --stdio', () => {
    assert.deepEqual(parseReceiveArgs(['--listen', '0.0.0.0:7070', '--key', '/k', '--once', '--max-creds', 'root', '--runtime', 'crun']).runtime, 'crun');
    const l = parseReceiveArgs(['--listen', '0.0.0.0:7070', '--key', '/k', '--trust', '/t']);
    assert.deepEqual(l, { listen: { host: '0.0.0.0', port: 7070 }, key: '/k', stdio: false, once: false, json: false, trust: '/t' });
    assert.deepEqual(parseReceiveArgs(['--stdio', '--trust', '/t', '--json']), { stdio: true, once: true, json: true, trust: '/t' });
    usage(() => parseReceiveArgs(['--stdio', '--listen', '1.2.3.4:1']), 'receive', /^--stdio and --listen exclude each other/);
    usage(() => parseReceiveArgs(['--stdio', '--key', 'k']), 'receive', '--key is for --listen only: under --stdio ssh authenticates the sender');
    usage(() => parseReceiveArgs(['--key', 'k']), 'receive', /^--listen is required .*, or --stdio under ssh$/);
  });

  it('sends the JSON error of receive --stdio to stderr: stdout carries the migration', () => {
    assert.equal(jsonErrorStream('receive', ['--stdio', '--json']), 2);
    assert.equal(jsonErrorStream('receive', ['--listen', 'a:1', '--json']), 1);
    assert.equal(jsonErrorStream('migrate', ['--json']), 1);
  });

  it('formats destinations back as they were written', () => {
    for (const url of ['tcp://10.0.0.2:7070', 'tcp://[::1]:7070', 'ssh://node2', 'ssh://root@node2:2222', 'ssh://[fd00::2]']) {
      assert.equal(formatUrl(parseUrl(url)), url);
    }
  });
});

describe('ferry migrate pre-copy arguments', { timeout: 30_000 }, () => {
  const base = ['--pid', '42', '--to', 'tcp://127.0.0.1:7070', '--key', '/k'];
  it('leaves the rounds to the library by default and with --pre-copy', () => {
    assert.equal(parseMigrateArgs(base).maxRounds, undefined);
    assert.equal(parseMigrateArgs([...base, '--pre-copy']).maxRounds, undefined);
  });

  it('parses --max-rounds N and --no-pre-copy', () => {
    assert.equal(parseMigrateArgs([...base, '--max-rounds', '3']).maxRounds, 3);
    assert.equal(parseMigrateArgs([...base, '--pre-copy', '--max-rounds', '64']).maxRounds, 64);
    assert.equal(parseMigrateArgs([...base, '--no-pre-copy']).maxRounds, 0);
  });

  it('refuses contradictions and rounds out of range', () => {
    usage(() => parseMigrateArgs([...base, '--pre-copy', '--no-pre-copy']), 'migrate', '--pre-copy and --no-pre-copy contradict each other: give one');
    usage(() => parseMigrateArgs([...base, '--no-pre-copy', '--max-rounds', '2']), 'migrate',
      '--max-rounds counts pre-copy rounds, which --no-pre-copy turns off: give one');
    for (const bad of ['0', '65', 'x', '-1', '1.5']) {
      usage(() => parseMigrateArgs([...base, `--max-rounds=${bad}`]), 'migrate', `--max-rounds needs a number of rounds from 1 to 64, got "${bad}"`);
    }
  });

  it('parses --lazy (off by default) with pre-copy, with --no-pre-copy, and for a container', () => {
    assert.equal(parseMigrateArgs(base).lazy, undefined);
    assert.equal(parseMigrateArgs([...base, '--lazy']).lazy, true);
    assert.equal(parseMigrateArgs([...base, '--lazy', '--max-rounds', '4']).maxRounds, 4);
    const stopAndCopy = parseMigrateArgs([...base, '--lazy', '--no-pre-copy']);
    assert.equal(stopAndCopy.lazy, true);
    assert.equal(stopAndCopy.maxRounds, 0);
    const container = parseMigrateArgs(['web1', '--to', 'tcp://127.0.0.1:7070', '--key', '/k', '--lazy', '--target-id', 'web2']);
    assert.equal(container.lazy, true);
    assert.equal(container.container?.id, 'web1');
  });
});
