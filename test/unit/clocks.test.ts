/**
 * container.json `clocks` as an image gives it (src/container/clocks.ts): bounded before the
 * restore makes a time namespace from it. Pure.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { validateClocks } from '../../src/container/clocks.js';

describe('validateClocks', () => {
  it('takes two decimal nanosecond counts of at most 100 years', () => {
    assert.deepEqual(validateClocks({ monotonic: '0', boottime: '33816632619925' }), { monotonic: '0', boottime: '33816632619925' });
    assert.deepEqual(validateClocks({ monotonic: '3162240000000000000', boottime: '1' }), { monotonic: '3162240000000000000', boottime: '1' });
  });

  it('refuses anything else with one line', () => {
    for (const bad of [null, 'x', {}, { monotonic: '1' }, { monotonic: 1, boottime: 1 }, { monotonic: '-5', boottime: '1' },
      { monotonic: '1e9', boottime: '1' }, { monotonic: '3162240000000000001', boottime: '1' }, { monotonic: '99999999999999999999', boottime: '1' },
      { monotonic: '1', boottime: '1', extra: '1' }]) {
      assert.throws(() => validateClocks(bad), (err: Error & { code?: string }) => err.code === 'EIMAGE' && !err.message.includes('\n')
        && /container\.json clocks must be \{monotonic, boottime\}/.test(err.message), JSON.stringify(bad));
    }
  });
});
