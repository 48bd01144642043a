/**
 * The part of the `ferry` command line that needs none of the engine: the command word, the
 * manual pages (`--help`, `-h`, `ferry help [COMMAND]`), `--version` and `ferry version`, and
 * usage errors (exit status 2). main.ts runs it first, on every command line; the launchers'
 * start (cli/start.cts) runs it alone, from its own small bundle `ferry-light.cjs`, and loads
 * the engine's bundle and its code cache only when it hands a command on. So the light
 * commands print what they always printed, from this one code, in about the time of a bare
 * node (docs/architecture.md, "Start-up").
 *
 * Keep its imports light: everything it reaches is in that small bundle and compiled on
 * every start (a usage error's parse needs args.ts and the few modules its checks call).
 */
import {
  COMMANDS, jsonErrorStream, parseCheckArgs, parseCheckpointArgs, parseDemoArgs, parseHelpArgs, parseInspectArgs, parseKeygenArgs,
  parseMigrateArgs, parseReceiveArgs, parseRestoreArgs, parseVersionArgs, UsageError, wantsHelp, type Command,
} from './args.js';
import { helpPage } from './help.js';
import { errorObject, printLine, type Stream } from './output.js';
import { FERRY_VERSION } from '../version.js';

/** The commands that do work: the ones light() hands on, once their line parses. */
export type HeavyCommand = Exclude<Command, 'help' | 'version'>;

/**
 * A command line light() did not finish, for main.ts: a command to run (its line parsed
 * without a usage error), or the error light() met answering it (a bug, or a write that
 * failed), to report as main.ts reports any.
 */
export type HandedOn =
  | { command: HeavyCommand; argv: readonly string[] }
  | { command: Command; argv: readonly string[]; error: unknown };

/** The strict parse of each command that does work: only its usage errors matter here. */
const PARSERS: Readonly<Record<HeavyCommand, (argv: readonly string[]) => unknown>> = {
  checkpoint: parseCheckpointArgs, restore: parseRestoreArgs, migrate: parseMigrateArgs, receive: parseReceiveArgs,
  inspect: parseInspectArgs, keygen: parseKeygenArgs, check: parseCheckArgs, demo: parseDemoArgs,
};

/** One line, whatever the message holds (a message is never meant to span lines). */
export const oneLine = (text: string): string => text.replace(/\s*\n\s*/g, ' ').trim();

/**
 * Prints a usage error of `command` ('' for the top level): its line, the hint naming the
 * --help to read, and with --json its object on `json`. Returns its exit status, 2.
 */
export function reportUsage(command: Command | '', err: UsageError, json: Stream | undefined): number {
  const message = oneLine(err.message);
  printLine(2, `${command === '' ? 'ferry' : `ferry ${command}`}: ${message}`);
  printLine(2, `Try 'ferry ${err.command === '' ? '' : `${err.command} `}--help'.`);
  if (json !== undefined) printLine(json, JSON.stringify(errorObject(err.code, message)));
  return 2;
}

/**
 * Answers `argv` (without node and the script) when it needs no engine: prints what the
 * command prints and returns its exit status. Otherwise returns what main.ts is to do: the
 * command to run (its line parsed without a usage error), or an error to report.
 */
export function light(argv: readonly string[]): number | HandedOn {
  const [word, ...rest] = argv;
  const top = jsonErrorStream('', argv);
  if (word === undefined) return reportUsage('', new UsageError('', `a command is needed: ${COMMANDS.join(', ')}`), top);
  if (word === '--help' || word === '-h') return command('help', rest);
  if (word === '--version') return command('version', rest);
  if (word.startsWith('-')) {
    return reportUsage('', new UsageError('', `unknown option ${word} (options go after the command: ferry COMMAND [OPTIONS])`), top);
  }
  if (!(COMMANDS as readonly string[]).includes(word)) {
    return reportUsage('', new UsageError('', `unknown command "${word}"; the commands are ${COMMANDS.join(', ')}`), top);
  }
  return command(word as Command, rest);
}

/** light() for one command: its page, its whole run (help, version), or its usage error. */
function command(name: Command, argv: readonly string[]): number | HandedOn {
  try {
    // Help wins over every other mistake on the line (args.ts wantsHelp).
    if (name !== 'help' && wantsHelp(name, argv)) {
      printLine(1, helpPage(name));
      return 0;
    }
    if (name === 'version') {
      const o = parseVersionArgs(argv);
      printLine(1, o.json ? JSON.stringify({ version: FERRY_VERSION }) : `ferry ${FERRY_VERSION}`);
      return 0;
    }
    if (name === 'help') {
      printLine(1, helpPage(parseHelpArgs(argv).topic));
      return 0;
    }
    PARSERS[name](argv);
    return { command: name, argv };
  } catch (err) {
    if (err instanceof UsageError) return reportUsage(name, err, jsonErrorStream(name, argv));
    return { command: name, argv, error: err };
  }
}
