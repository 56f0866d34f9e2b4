import { EntitySchema } from "@mikro-orm/core";

/** What a caller may do. */
export const ROLES = ["admin", "operator", "viewer", "worker"] as const;

/** A bearer token, kept only as the hash of its secret part. */
export interface ApiTokenEntity {
  id: string;
  name: string;
  role: (typeof ROLES)[number];
  /** The one host a worker token acts for; unset for every other role. */
  hostUuid?: string | null;
  secretHash: Buffer;
  createdAt: Date;
  revokedAt?: Date | null;
}

export const ApiTokenSchema = new EntitySchema<ApiTokenEntity>({
  name: "ApiToken",
  tableName: "api_token",
  checks: [
    {
      name: "api_token_worker_host_check",
      expression: "(role = 'worker') = (host_uuid is not null)",
    },
  ],
  properties: {
    id: { type: "uuid", primary: true },
    name: { type: "text" },
    role: { enum: true, items: [...ROLES] },
    hostUuid: { type: "uuid", nullable: true, index: true },
    secretHash: { type: "blob", columnType: "bytea" },
    createdAt: { type: "datetime", columnType: "timestamptz(3)" },
    revokedAt: {
      type: "datetime",
      columnType: "timestamptz(3)",
      nullable: true,
    },
  },
});
