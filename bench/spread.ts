/**
 * The min, median and max of a figure over a bench's runs, as every bench prints it. The
 * median of an even number of runs is the mean of the middle two.
 */
export interface Spread { min: number; median: number; max: number }

export function spread(values: readonly number[]): Spread {
  const v = [...values].sort((a, b) => a - b);
  const mid = v.length >> 1;
  return { min: v[0]!, median: v.length % 2 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2, max: v[v.length - 1]! };
}

/** "min / median / max" of `values`, each formatted by `f`, joined by `sep`. */
export function showSpread(values: readonly number[], f: (v: number) => string, sep = ' / '): string {
  const s = spread(values);
  return [s.min, s.median, s.max].map(f).join(sep);
}
