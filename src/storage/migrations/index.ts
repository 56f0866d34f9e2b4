import { Migration20261203000000 } from "./Migration20261203000000.js";
import { Migration20261203100000 } from "./Migration20261203100000.js";

/** Every migration, oldest first; applied at start-up. */
export const migrationsList = [
  { name: "Migration20261203000000", class: Migration20261203000000 },
  { name: "Migration20261203100000", class: Migration20261203100000 },
];
