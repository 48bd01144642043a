/**
 * A migration channel's transport over two pipes instead of one socket: the sender's ssh child
 * (its stdout to read, its stdin to write: ssh.ts) and `ferry receive --stdio` (its own stdin
 * and stdout, which sshd connects to the sender's ssh). Over ssh no TLS layer is added: ssh has
 * authenticated both ends and encrypts the stream (docs/migration.md, "ssh://").
 *
 * It behaves as the channel expects of a socket (channel.ts, Transport): data in order, write
 * with backpressure, `end` closes the writing pipe (the peer reads EOF), `destroy` closes both,
 * `close` is emitted once, and `setTimeout` is an idle timer reset by every byte either way.
 */
import { Duplex, type Readable, type Writable } from 'node:stream';

export class PipeTransport extends Duplex {
  private idleMs = 0;
  private onIdle: (() => void) | undefined;
  private timer: NodeJS.Timeout | undefined;

  /**
   * `input` is read, `output` written. `settle`, when given, is awaited (at most 2 s) after the
   * input ends or a pipe fails and before the transport closes: the ssh child's exit status
   * says more than "EOF" (ssh.ts fails the channel with it first).
   */
  constructor(private readonly input: Readable, private readonly output: Writable, private readonly settle?: Promise<unknown>) {
    super({ allowHalfOpen: true });
    input.on('data', (d: Buffer) => {
      this.touch();
      if (!this.push(d)) input.pause();
    });
    input.on('end', () => this.lost());
    input.on('error', (err) => this.lost(err));
    output.on('error', (err) => this.lost(err));
  }

  /** Calls `onIdle` once nothing was read or written for `ms` (0: never), as net.Socket does. */
  setTimeout(ms: number, onIdle?: () => void): this {
    this.idleMs = ms;
    if (onIdle !== undefined) this.onIdle = onIdle;
    this.touch();
    return this;
  }

  override _read(): void {
    this.input.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, done: (err?: Error | null) => void): void {
    this.touch();
    this.output.write(chunk, (err) => done(err ?? null));
  }

  override _final(done: (err?: Error | null) => void): void {
    this.output.end(() => done());
  }

  override _destroy(err: Error | null, done: (err?: Error | null) => void): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.input.destroy();
    this.output.destroy();
    done(err);
  }

  /** The input ended or a pipe failed: the transport closes (after `settle`). */
  private lost(err?: Error): void {
    const close = (): void => { if (!this.destroyed) this.destroy(err); };
    if (this.settle === undefined) return close();
    const bound = setTimeout(close, 2000);
    void this.settle.finally(() => { clearTimeout(bound); close(); });
  }

  private touch(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.idleMs > 0 && !this.destroyed) {
      this.timer = setTimeout(() => this.onIdle?.(), this.idleMs);
      this.timer.unref();
    }
  }
}
