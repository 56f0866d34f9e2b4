/** Where a worker host stands. */
export const HOST_STATES = [
  "enrolled",
  "alive",
  "lost",
  "decommissioned",
] as const;
export type HostState = (typeof HOST_STATES)[number];

/** A worker host: enrolled by an operator, or first seen by a heartbeat. */
export interface WorkerHost {
  readonly hostUuid: string;
  readonly state: HostState;
  /** The name given at enrolment; null for a host known by heartbeats only. */
  readonly name: string | null;
  /** The agent version of the latest heartbeat; null before the first. */
  readonly agentVersion: string | null;
  readonly firstHeartbeatAt: Date | null;
  readonly lastHeartbeatAt: Date | null;
  /** Set while the host is lost. */
  readonly lostAt: Date | null;
  readonly enrolledAt: Date | null;
  readonly decommissionedAt: Date | null;
  readonly certificateFingerprint: string | null;
}
