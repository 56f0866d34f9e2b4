import type { LifecycleChange } from "../domain/lifecycle.js";

/** Receives every committed change, in revision order, without gaps. */
export type ChangeListener = (change: LifecycleChange) => void;

/**
 * Told, once, that the feed can no longer promise its listener every change
 * (the database stopped answering); the listener is unsubscribed by then.
 */
export type InterruptionListener = (cause: unknown) => void;

/** A listener's registration with a change feed. */
export interface ChangeSubscription {
  /**
   * The newest revision delivered before the listener was added: the
   * listener gets every change after it.
   */
  readonly revision: bigint;
  /** Stops delivery to the listener. */
  close(): void;
}

/**
 * Delivers committed changes to the watchers of this process the moment they
 * commit. Writers in this process hand their changes to `publish` after
 * commit; an implementation that shares one database between replicas also
 * learns of other processes' commits itself.
 */
export interface ChangeFeed {
  /** Hands over changes that just committed, in any order. */
  publish(changes: readonly LifecycleChange[]): void;
  /**
   * Delivers every change after the subscription's revision to `listener`,
   * until the subscription is closed or `interrupted` is called.
   */
  subscribe(
    listener: ChangeListener,
    interrupted: InterruptionListener,
  ): ChangeSubscription;
  /** The newest revision delivered to listeners. */
  readonly revision: bigint;
  /** How many listeners are subscribed now. */
  readonly subscribers: number;
  /** Stops delivery and waits for any read of the log in flight. */
  close(): Promise<void>;
}
