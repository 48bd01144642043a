/**
 * Running controller work inside a task's network namespace. Sockets belong to the network
 * namespace they are created in, and sock_diag and /proc/net answer for the caller's: to dump
 * or recreate a container's sockets the controller's thread joins the container's namespace
 * for the duration. Network namespaces are per thread and every syscall of the controller runs
 * synchronously on the JS thread, so `fn` must be synchronous.
 */
import { closeSync, fstatSync, openSync } from 'node:fs';
import { native } from '../native/binding.js';

const CLONE_NEWNET = 0x40000000;

/**
 * Runs `fn` in the network namespace of `pid`, or of the namespace file at path `pid` (a
 * bind-mounted one, /run/netns/NAME); as is when `pid` is undefined or shares ours.
 */
export function withNetns<T>(pid: number | string | undefined, fn: () => T): T {
  if (pid === undefined) return fn();
  const target = openSync(typeof pid === 'string' ? pid : `/proc/${pid}/ns/net`, 'r');
  const own = openSync('/proc/thread-self/ns/net', 'r');
  try {
    if (fstatSync(target).ino === fstatSync(own).ino) return fn();
    native().setNs(target, CLONE_NEWNET);
    try {
      return fn();
    } finally {
      native().setNs(own, CLONE_NEWNET);
    }
  } finally {
    closeSync(target);
    closeSync(own);
  }
}
