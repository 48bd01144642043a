/** `ferry inspect`: typed options -> library inspect -> the report as text or JSON. */
import { isatty } from 'node:tty';
import { formatInspect } from '../image/inspect.js';
import { inspect } from '../index.js';
import { UsageError, type InspectCliOptions } from './args.js';
import type { RunContext } from './context.js';
import { printLine } from './output.js';

/** Verifies and describes the image `o.image` on stdout. */
export async function runInspect(o: InspectCliOptions, ctx: RunContext): Promise<void> {
  if (o.image === '-' && isatty(0)) {
    throw new UsageError('inspect', '--image - reads the image from standard input, which is a terminal: pipe or redirect the image in');
  }
  const report = await inspect({ image: o.image, config: ctx.config, logger: ctx.logger });
  printLine(1, o.json ? JSON.stringify(report, null, 2) : formatInspect(report, o.verbose));
}
