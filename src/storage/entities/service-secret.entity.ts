import { EntitySchema } from "@mikro-orm/core";

/**
 * A secret the service keeps in its database so that every replica and every
 * restart signs and checks page tokens with the same key.
 */
export interface ServiceSecretEntity {
  name: string;
  value: Buffer;
}

export const ServiceSecretSchema = new EntitySchema<ServiceSecretEntity>({
  name: "ServiceSecret",
  tableName: "service_secret",
  properties: {
    name: { type: "text", primary: true },
    value: { type: "blob", columnType: "bytea" },
  },
});
