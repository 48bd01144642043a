/**
 * Sessions and process groups a checkpoint accepts (src/dump/tree.ts checkGroups): a group led
 * from outside the tree is kept when it is in the root's session and that session is led from
 * outside too (the restore joins it again where it exists, restore/tree.ts outsideGroups); a
 * session led from outside other than the root's, or an outside group in a session the tree
 * leads whose leader still runs, is refused with one line; one whose leader exited is kept
 * (restore makes it again, restore/tree.ts leaderlessGroups). The real thing runs in test/integration/groups.test.ts.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { checkGroups } from '../../src/dump/tree.js';
import type { FerryError } from '../../src/errors.js';
import type { ProcessRecord } from '../../src/image/records.js';
import { leaderlessGroups } from '../../src/restore/tree.js';
import { validateTree } from '../../src/restore/validate.js';

const p = (pid: number, ppid: number, pgid: number, sid: number): ProcessRecord => ({ pid, ppid, pgid, sid, zombie: null });

const refused = (recs: ProcessRecord[], message: RegExp, exists?: (pid: number) => boolean): void => {
  assert.throws(() => checkGroups(recs, recs[0]!.pid, exists), (err: FerryError) => {
    assert.equal(err.code, 'EUNSUPPORTED');
    assert.equal(err.message.split('\n').length, 1);
    assert.match(err.message, message);
    return true;
  });
};

describe('process groups and sessions led from outside the tree', () => {
  it('a child left in the shell\'s job group when its parent made its own: kept', () => {
    checkGroups([p(10, 5, 10, 5), p(11, 10, 5, 5)], 10);
  });
  it('a child in another group of the root\'s session, led from outside: kept', () => {
    checkGroups([p(10, 5, 5, 5), p(11, 10, 7, 5)], 10);
  });
  it('the root\'s own group and session led from outside: kept (as before)', () => {
    checkGroups([p(10, 5, 5, 3), p(11, 10, 5, 3)], 10);
  });
  it('a session led from outside, not the root\'s: refused', () => {
    // (a session leader that exited: its orphan, adopted by the root as a subreaper)
    refused([p(10, 5, 10, 10), p(11, 10, 11, 9)], /pid 11 is in session 9 but its parent 10 is in session 10/);
    refused([p(10, 1, 10, 3), p(11, 10, 11, 11), p(12, 11, 12, 9)], /pid 12 is in session 9 but its parent 11 is in session 11/);
  });
  it('an outside group in a session the tree leads, its leader alive: refused', () => {
    refused([p(10, 5, 10, 10), p(11, 10, 7, 10)], /pid 11 is in process group 7 of session 10, which the tree leads, but the group is led from outside the tree \(by pid 7, which exists: running, or a zombie its parent has not reaped\)/, () => true);
  });
  it('a group of a session the tree leads whose leader exited: kept (made again around a helper)', () => {
    const asked: number[] = [];
    checkGroups([p(10, 5, 10, 10), p(11, 10, 7, 10), p(12, 10, 7, 10)], 10, (pid) => { asked.push(pid); return false; });
    assert.deepEqual([...new Set(asked)], [7], 'only the group id is looked for');
  });
  it('restore makes a group of a session the tree leads led from outside it again, forked by a live member', () => {
    const z = { ...p(11, 10, 7, 10), zombie: { status: 0 } };
    const recs = [p(10, 5, 10, 10), z, p(12, 10, 7, 10), p(13, 10, 8, 5), p(14, 10, 10, 10)];
    assert.deepEqual([...leaderlessGroups({ root: 10, processes: recs })].map(([g, by]) => [g, by.pid]), [[7, 12]]);
  });
  it('an image whose group spans two sessions is refused', () => {
    const recs = [p(10, 5, 10, 10), p(11, 10, 7, 10), p(12, 10, 7, 12)];
    assert.throws(() => validateTree({ root: 10, processes: recs }, 10, [10, 11, 12]),
      /pid 12 is in process group 7 of session 12, another member of it in session 10/);
  });
  it('an image whose leaderless group claims the session of a process that leads none is refused', () => {
    // Else the group would be made in the session of whoever runs the restore.
    const recs = [p(10, 5, 10, 5), p(11, 10, 7, 10)];
    assert.throws(() => validateTree({ root: 10, processes: recs }, 10, [10, 11]), /pid 11 is in session 10, which pid 10 does not lead \(its session is 5\)/);
  });
});
