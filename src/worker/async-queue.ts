/**
 * A first-in first-out queue that a producer pushes into and one consumer
 * drains with `for await`. It turns push-style events (a timer, a report call)
 * into the request stream of a client-streaming RPC.
 *
 * The queue is its own iterator, as an async generator is: connect-es asks the
 * request iterable for its iterator again when a call is aborted, and expects
 * the same one, with `throw` and `return`.
 */
export class AsyncQueue<T> implements AsyncIterableIterator<T> {
  readonly #buffer: T[] = [];
  readonly #waiters: Array<(result: IteratorResult<T>) => void> = [];
  #closed = false;

  /** Whether the queue takes no more values. */
  get closed(): boolean {
    return this.#closed;
  }

  /** How many values wait for the consumer. */
  get size(): number {
    return this.#buffer.length;
  }

  /**
   * Hands a value to a waiting consumer, or buffers it. Returns false, and
   * drops the value, once the queue is closed.
   */
  push(value: T): boolean {
    if (this.#closed) return false;
    const waiter = this.#waiters.shift();
    if (waiter) waiter({ value, done: false });
    else this.#buffer.push(value);
    return true;
  }

  /**
   * Takes no more values; the consumer still receives the buffered ones and
   * then sees the end. Closing twice does nothing.
   */
  close(): void {
    this.#closed = true;
    // Waiters exist only while the buffer is empty, so none misses a value.
    this.#endWaiters();
  }

  /** The next value, waiting for one if the buffer is empty. */
  next(): Promise<IteratorResult<T, undefined>> {
    if (this.#buffer.length > 0) {
      const value = this.#buffer.shift() as T;
      return Promise.resolve({ value, done: false });
    }
    if (this.#closed) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /**
   * The consumer gives up (a `break`, or the call ended): nobody will read
   * what is buffered, so it is dropped rather than held.
   */
  return(): Promise<IteratorResult<T, undefined>> {
    this.#closed = true;
    this.#buffer.length = 0;
    this.#endWaiters();
    return Promise.resolve({ value: undefined, done: true });
  }

  /** The consumer failed; the queue ends as on `return`. */
  throw(): Promise<IteratorResult<T, undefined>> {
    return this.return();
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  #endWaiters(): void {
    for (const waiter of this.#waiters.splice(0)) {
      waiter({ value: undefined, done: true });
    }
  }
}
