import { LifecycleError } from "../domain/errors.js";
import { query } from "./sql.js";
import type { WriteTransaction } from "./write-transaction.js";

/**
 * Claims an Accept idempotency key for a body. Returns undefined when the key
 * is new (the caller then stores its answer with `storeAcceptResponse` in the
 * same transaction), or the first answer when the key was already used with
 * the same body. A key used with another body is ALREADY_EXISTS. A racing
 * call with the same key waits here for the first to commit or roll back.
 */
export async function claimAcceptKey(
  tx: WriteTransaction,
  requestId: string,
  bodyHash: string,
): Promise<Buffer | undefined> {
  const [claimed] = await query(
    tx.em,
    `insert into accept_request (request_id, body_hash, response, created_at)
     values (?, ?, '', clock_timestamp())
     on conflict (request_id) do nothing
     returning request_id`,
    [requestId, bodyHash],
  );
  if (claimed) return undefined;
  const [prior] = await query(
    tx.em,
    "select body_hash, response from accept_request where request_id = ?",
    [requestId],
  );
  if (prior!.body_hash !== bodyHash) {
    throw new LifecycleError(
      "already_exists",
      `request_id ${JSON.stringify(requestId)} was already used with a different body`,
    );
  }
  return prior!.response as Buffer;
}

/** Stores the answer to a newly claimed key. */
export async function storeAcceptResponse(
  tx: WriteTransaction,
  requestId: string,
  response: Uint8Array,
): Promise<void> {
  await query(
    tx.em,
    "update accept_request set response = ? where request_id = ?",
    [Buffer.from(response), requestId],
  );
}
