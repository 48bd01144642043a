/**
 * Facts about this host that an image depends on: kernel build (the vDSO is restored by
 * moving the new task's own vDSO, so it must be the same binary), architecture and the XSAVE
 * features of the CPU.
 */
import { createHash } from 'node:crypto';
import { closeSync, openSync, readFileSync, readSync } from 'node:fs';
import { arch, release, version } from 'node:os';
import { native } from './native/binding.js';

/** The kernel's special mappings, by /proc/PID/maps name, in address order. */
export const SPECIAL_MAPPINGS = ['[vvar]', '[vvar_vclock]', '[vdso]'] as const;

export interface HostFacts {
  kernelRelease: string;
  kernelVersion: string;
  arch: string;
  /** sha256 of this kernel's vDSO image. */
  vdsoSha256: string;
  /** Sizes of [vvar], [vvar_vclock], [vdso] as this kernel maps them. */
  vdsoLayout: Array<{ name: string; size: number }>;
  /** XCR0 as hex. */
  xfeatures: string;
}

let cached: HostFacts | undefined;
let vdsoBytes: Buffer | undefined;

/** This kernel's vDSO image (the same in every process), if it maps one. */
export function hostVdso(): Buffer | undefined {
  hostFacts();
  return vdsoBytes;
}

/** Reads (once) the host facts from /proc/self and the CPU. */
export function hostFacts(): HostFacts {
  if (cached) return cached;
  const maps = readFileSync('/proc/self/maps', 'utf8').split('\n');
  const layout: Array<{ name: string; size: number }> = [];
  let vdsoSha256 = '';
  for (const name of SPECIAL_MAPPINGS) {
    const line = maps.find((l) => l.endsWith(` ${name}`));
    if (!line) continue;
    const [s, e] = line.split(' ')[0]!.split('-').map((x) => BigInt(`0x${x}`)) as [bigint, bigint];
    layout.push({ name, size: Number(e - s) });
    if (name === '[vdso]') {
      const buf = Buffer.alloc(Number(e - s));
      const fd = openSync('/proc/self/mem', 'r');
      try {
        readSync(fd, buf, 0, buf.length, Number(s));
      } finally {
        closeSync(fd);
      }
      vdsoSha256 = createHash('sha256').update(buf).digest('hex');
      vdsoBytes = buf;
    }
  }
  cached = {
    kernelRelease: release(),
    kernelVersion: version(),
    arch: arch() === 'x64' ? 'x86_64' : arch(),
    vdsoSha256,
    vdsoLayout: layout,
    xfeatures: `0x${native().xgetbv().toString(16)}`,
  };
  return cached;
}

