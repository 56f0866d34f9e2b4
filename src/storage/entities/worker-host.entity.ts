import { EntitySchema } from "@mikro-orm/core";

/** A worker host as last seen by a Heartbeat message. */
export interface WorkerHostEntity {
  hostUuid: string;
  agentVersion: string;
  firstSeenAt: Date;
  lastHeartbeatAt: Date;
}

export const WorkerHostSchema = new EntitySchema<WorkerHostEntity>({
  name: "WorkerHost",
  tableName: "worker_host",
  properties: {
    hostUuid: { type: "uuid", primary: true },
    agentVersion: { type: "text" },
    firstSeenAt: { type: "datetime", columnType: "timestamptz(3)" },
    lastHeartbeatAt: { type: "datetime", columnType: "timestamptz(3)" },
  },
});
