import { EntitySchema } from "@mikro-orm/core";

/** An Accept idempotency key with the body it came with and its answer. */
export interface AcceptRequestEntity {
  requestId: string;
  bodyHash: string;
  /** The serialised AcceptResponse the key first got. */
  response: Buffer;
  createdAt: Date;
}

export const AcceptRequestSchema = new EntitySchema<AcceptRequestEntity>({
  name: "AcceptRequest",
  tableName: "accept_request",
  properties: {
    requestId: { type: "text", primary: true },
    bodyHash: { type: "text" },
    response: { type: "blob", columnType: "bytea" },
    createdAt: { type: "datetime", columnType: "timestamptz(3)", index: true },
  },
});
