import { EntitySchema } from "@mikro-orm/core";
import { HOST_STATES, type HostState } from "../../domain/host.js";

/** A worker host: enrolled by an operator, or first seen by a heartbeat. */
export interface WorkerHostEntity {
  hostUuid: string;
  state: HostState;
  name?: string | null;
  agentVersion?: string | null;
  firstSeenAt?: Date | null;
  lastHeartbeatAt?: Date | null;
  enrolledAt?: Date | null;
  lostAt?: Date | null;
  decommissionedAt?: Date | null;
  certificateFingerprint?: string | null;
}

const moment = {
  type: "datetime",
  columnType: "timestamptz(3)",
  nullable: true,
} as const;

export const WorkerHostSchema = new EntitySchema<WorkerHostEntity>({
  name: "WorkerHost",
  tableName: "worker_host",
  indexes: [
    {
      name: "worker_host_state_last_heartbeat_at_index",
      properties: ["state", "lastHeartbeatAt"],
    },
  ],
  properties: {
    hostUuid: { type: "uuid", primary: true },
    state: { enum: true, items: [...HOST_STATES], default: "alive" },
    name: { type: "text", nullable: true },
    agentVersion: { type: "text", nullable: true },
    firstSeenAt: moment,
    lastHeartbeatAt: moment,
    enrolledAt: moment,
    lostAt: moment,
    decommissionedAt: moment,
    certificateFingerprint: { type: "text", nullable: true, unique: true },
  },
});
