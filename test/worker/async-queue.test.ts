import { describe, expect, it } from "vitest";
import { AsyncQueue } from "../../src/worker/async-queue.js";

describe("AsyncQueue", () => {
  it("hands buffered values to the consumer in push order", async () => {
    const queue = new AsyncQueue<number>();

    expect(queue.push(1)).toBe(true);
    expect(queue.push(2)).toBe(true);

    expect(queue.size).toBe(2);
    expect(await queue.next()).toEqual({ value: 1, done: false });
    expect(await queue.next()).toEqual({ value: 2, done: false });
    expect(queue.size).toBe(0);
  });

  it("resolves a waiting next() with the next value pushed", async () => {
    const queue = new AsyncQueue<string>();
    const waiting = queue.next();

    queue.push("a");

    expect(await waiting).toEqual({ value: "a", done: false });
    expect(queue.size).toBe(0);
  });

  it("drains buffered values after close, then ends", async () => {
    const queue = new AsyncQueue<number>();
    queue.push(1);
    queue.push(2);

    queue.close();

    const received: number[] = [];
    for await (const value of queue) received.push(value);
    expect(received).toEqual([1, 2]);
    expect(queue.closed).toBe(true);
  });

  it("ends a waiting next() when closed", async () => {
    const queue = new AsyncQueue<number>();
    const waiting = queue.next();

    queue.close();

    expect(await waiting).toEqual({ value: undefined, done: true });
  });

  it("refuses and drops values pushed after close", async () => {
    const queue = new AsyncQueue<number>();
    queue.close();

    expect(queue.push(1)).toBe(false);

    expect(queue.size).toBe(0);
    expect(await queue.next()).toEqual({ value: undefined, done: true });
  });

  it("drops buffered values when the consumer returns", async () => {
    const queue = new AsyncQueue<number>();
    queue.push(1);
    queue.push(2);

    expect(await queue.return()).toEqual({ value: undefined, done: true });

    expect(queue.closed).toBe(true);
    expect(queue.size).toBe(0);
    expect(queue.push(3)).toBe(false);
    expect(await queue.next()).toEqual({ value: undefined, done: true });
  });

  it("ends a waiting next() when the consumer returns", async () => {
    const queue = new AsyncQueue<number>();
    const waiting = queue.next();

    await queue.return();

    expect(await waiting).toEqual({ value: undefined, done: true });
  });

  it("ends like return when the consumer throws into it", async () => {
    const queue = new AsyncQueue<number>();
    queue.push(1);

    expect(await queue.throw()).toEqual({ value: undefined, done: true });

    expect(queue.closed).toBe(true);
    expect(queue.size).toBe(0);
    expect(await queue.next()).toEqual({ value: undefined, done: true });
  });

  it("is its own iterator, so asking twice gives the same one", () => {
    const queue = new AsyncQueue<number>();

    expect(queue[Symbol.asyncIterator]()).toBe(queue);
    expect(queue[Symbol.asyncIterator]()).toBe(queue);
  });

  it("ends a for await loop with break and drops the rest", async () => {
    const queue = new AsyncQueue<number>();
    queue.push(1);
    queue.push(2);
    queue.push(3);

    const received: number[] = [];
    for await (const value of queue) {
      received.push(value);
      if (value === 1) break;
    }

    expect(received).toEqual([1]);
    expect(queue.closed).toBe(true);
    expect(queue.size).toBe(0);
  });

  it("delivers undefined as a value when T allows it", async () => {
    const queue = new AsyncQueue<number | undefined>();
    queue.push(undefined);
    queue.close();

    expect(await queue.next()).toEqual({ value: undefined, done: false });
    expect(await queue.next()).toEqual({ value: undefined, done: true });
  });
});
