import { EntitySchema } from "@mikro-orm/core";
import { OPERATIONS, STATUSES } from "../../domain/lifecycle.js";

/** A row of `decky_lifecycle`: one attempt of one operation on one decky. */
export interface LifecycleRowEntity {
  id: string;
  deckyName: string;
  hostUuid?: string | null;
  operation: string;
  status: string;
  error?: string | null;
  startedAt: Date;
  updatedAt: Date;
  completedAt?: Date | null;
  revision: string;
}

export const LifecycleRowSchema = new EntitySchema<LifecycleRowEntity>({
  name: "LifecycleRow",
  tableName: "decky_lifecycle",
  indexes: [
    {
      name: "decky_lifecycle_started_at_id_index",
      properties: ["startedAt", "id"],
    },
    {
      name: "decky_lifecycle_one_open_row",
      expression: `create unique index decky_lifecycle_one_open_row
        on decky_lifecycle (decky_name, operation)
        where status in ('pending', 'running')`,
    },
    {
      name: "decky_lifecycle_open_updated_at_index",
      expression: `create index decky_lifecycle_open_updated_at_index
        on decky_lifecycle (updated_at)
        where status in ('pending', 'running')`,
    },
  ],
  checks: [
    {
      name: "decky_lifecycle_error_check",
      expression:
        "char_length(error) <= 2000 and (error is null or status = 'failed')",
    },
    {
      name: "decky_lifecycle_completed_at_check",
      expression:
        "(completed_at is not null) = (status = any (array['succeeded', 'failed']))",
    },
  ],
  properties: {
    id: { type: "uuid", primary: true },
    deckyName: { type: "text", index: true },
    hostUuid: { type: "uuid", nullable: true, index: true },
    operation: { enum: true, items: [...OPERATIONS], index: true },
    status: { enum: true, items: [...STATUSES], index: true },
    error: { type: "text", nullable: true },
    startedAt: { type: "datetime", columnType: "timestamptz(3)" },
    updatedAt: { type: "datetime", columnType: "timestamptz(3)" },
    completedAt: {
      type: "datetime",
      columnType: "timestamptz(3)",
      nullable: true,
    },
    revision: { type: "bigint" },
  },
});
