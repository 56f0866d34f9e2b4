import { EntitySchema } from "@mikro-orm/core";
import type { LifecycleRowEntity } from "./lifecycle-row.entity.js";

/**
 * A row of `lifecycle_change`, the append-only change log: the state of one
 * lifecycle row right after the change that got `revision`.
 */
export interface LifecycleChangeEntity {
  revision: string;
  lifecycle: LifecycleRowEntity;
  deckyName: string;
  hostUuid?: string | null;
  operation: string;
  status: string;
  error?: string | null;
  startedAt: Date;
  updatedAt: Date;
  completedAt?: Date | null;
}

export const LifecycleChangeSchema = new EntitySchema<LifecycleChangeEntity>({
  name: "LifecycleChange",
  tableName: "lifecycle_change",
  properties: {
    revision: { type: "bigint", primary: true, autoincrement: false },
    lifecycle: {
      kind: "m:1",
      entity: "LifecycleRow",
      fieldName: "lifecycle_id",
      index: "lifecycle_change_lifecycle_id_index",
    },
    deckyName: { type: "text" },
    hostUuid: { type: "uuid", nullable: true },
    operation: { type: "text" },
    status: { type: "text" },
    error: { type: "text", nullable: true },
    startedAt: { type: "datetime", columnType: "timestamptz(3)" },
    updatedAt: { type: "datetime", columnType: "timestamptz(3)" },
    completedAt: {
      type: "datetime",
      columnType: "timestamptz(3)",
      nullable: true,
    },
  },
});
