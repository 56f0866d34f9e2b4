import { EntitySchema } from "@mikro-orm/core";

/**
 * The single row of `lifecycle_revision`. Every write locks it, so revisions
 * are handed out in commit order; `pruned_through` is the newest revision the
 * change log no longer holds.
 */
export interface RevisionCounterEntity {
  id: number;
  value: string;
  prunedThrough: string;
}

export const RevisionCounterSchema = new EntitySchema<RevisionCounterEntity>({
  name: "RevisionCounter",
  tableName: "lifecycle_revision",
  checks: [{ name: "lifecycle_revision_single", expression: "id = 1" }],
  properties: {
    id: { type: "integer", primary: true, autoincrement: false },
    value: { type: "bigint" },
    prunedThrough: { type: "bigint" },
  },
});
