import type { DescMethod } from "@bufbuild/protobuf";
import { LifecycleService } from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";

/** What a caller may do; each token carries one role. */
export const ROLES = ["admin", "operator", "viewer", "worker"] as const;
export type Role = (typeof ROLES)[number];

const lifecycle = LifecycleService.method;

/**
 * The roles besides admin that may call each method. Admin may call
 * everything; a method missing here is admin's alone, host and token
 * management included. A worker's List and Watch see its own host's rows
 * only, and its Heartbeat speaks for its own host only: the handlers
 * confine it.
 */
const grants = new Map<DescMethod, readonly Role[]>([
  [lifecycle.accept, ["operator"]],
  [lifecycle.report, ["operator"]],
  [lifecycle.list, ["operator", "viewer", "worker"]],
  [lifecycle.watch, ["operator", "viewer", "worker"]],
  [lifecycle.heartbeat, ["worker"]],
]);

/** Whether a caller with `role` may call `method`. */
export function mayCall(role: Role, method: DescMethod): boolean {
  return role === "admin" || (grants.get(method)?.includes(role) ?? false);
}
