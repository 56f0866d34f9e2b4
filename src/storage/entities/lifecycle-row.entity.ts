import { EntitySchema } from "@mikro-orm/core";

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
  properties: {
    id: { type: "uuid", primary: true },
    deckyName: { type: "text", index: true },
    hostUuid: { type: "uuid", nullable: true, index: true },
    operation: { type: "text", index: true },
    status: { type: "text", index: true },
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
