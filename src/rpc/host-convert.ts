import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  type Host,
  HostSchema,
  HostState as HostStateEnum,
} from "../../gen/decky/lifecycle/v1/host_pb.js";
import type { HostState, WorkerHost } from "../domain/host.js";

const hostStateNames = new Map<HostStateEnum, HostState>([
  [HostStateEnum.ENROLLED, "enrolled"],
  [HostStateEnum.ALIVE, "alive"],
  [HostStateEnum.LOST, "lost"],
  [HostStateEnum.DECOMMISSIONED, "decommissioned"],
]);
const hostStateValues = new Map(
  [...hostStateNames].map(([value, name]) => [name, value]),
);

/** The host state an enum value names; undefined for UNSPECIFIED or unknown. */
export function hostStateOf(value: HostStateEnum): HostState | undefined {
  return hostStateNames.get(value);
}

export function hostStateEnum(state: HostState): HostStateEnum {
  return hostStateValues.get(state)!;
}

const at = (date: Date | null) =>
  date === null ? undefined : timestampFromDate(date);

/** A worker host as the contract's message. */
export function toHostMessage(host: WorkerHost): Host {
  return create(HostSchema, {
    hostUuid: host.hostUuid,
    state: hostStateEnum(host.state),
    name: host.name ?? "",
    agentVersion: host.agentVersion ?? "",
    firstHeartbeatAt: at(host.firstHeartbeatAt),
    lastHeartbeatAt: at(host.lastHeartbeatAt),
    lostAt: at(host.lostAt),
    enrolledAt: at(host.enrolledAt),
    decommissionedAt: at(host.decommissionedAt),
    certificateFingerprint: host.certificateFingerprint ?? "",
  });
}
