import { randomBytes } from "node:crypto";
import type { EntityManager } from "@mikro-orm/postgresql";
import { query } from "./sql.js";

/**
 * The secret named `name`, created at random on first use and kept in the
 * database, so every replica and every restart shares it.
 */
export async function loadServiceSecret(
  em: EntityManager,
  name: string,
): Promise<Buffer> {
  await query(
    em,
    "insert into service_secret (name, value) values (?, ?) on conflict (name) do nothing",
    [name, randomBytes(32)],
  );
  const [secret] = await query(
    em,
    "select value from service_secret where name = ?",
    [name],
  );
  return secret!.value as Buffer;
}
