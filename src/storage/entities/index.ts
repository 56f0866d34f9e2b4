import { AcceptRequestSchema } from "./accept-request.entity.js";
import { ApiTokenSchema } from "./api-token.entity.js";
import { LifecycleChangeSchema } from "./lifecycle-change.entity.js";
import { LifecycleRowSchema } from "./lifecycle-row.entity.js";
import { RevisionCounterSchema } from "./revision-counter.entity.js";
import { ServiceSecretSchema } from "./service-secret.entity.js";
import { WorkerHostSchema } from "./worker-host.entity.js";

/** Every entity of the service's database. */
export const entities = [
  LifecycleRowSchema,
  LifecycleChangeSchema,
  RevisionCounterSchema,
  AcceptRequestSchema,
  WorkerHostSchema,
  ServiceSecretSchema,
  ApiTokenSchema,
];
