import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  DeltaOutcome_Result,
  type Lifecycle,
  LifecycleSchema,
  Operation as OperationEnum,
  Status as StatusEnum,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import type { DeltaResult } from "../domain/delta.js";
import type { LifecycleRow, Operation, Status } from "../domain/lifecycle.js";

const operationNames = new Map<OperationEnum, Operation>([
  [OperationEnum.DEPLOY, "deploy"],
  [OperationEnum.MUTATE, "mutate"],
]);
const operationValues = new Map(
  [...operationNames].map(([value, name]) => [name, value]),
);

const statusNames = new Map<StatusEnum, Status>([
  [StatusEnum.PENDING, "pending"],
  [StatusEnum.RUNNING, "running"],
  [StatusEnum.SUCCEEDED, "succeeded"],
  [StatusEnum.FAILED, "failed"],
]);
const statusValues = new Map(
  [...statusNames].map(([value, name]) => [name, value]),
);

const resultValues: Record<DeltaResult, DeltaOutcome_Result> = {
  applied: DeltaOutcome_Result.APPLIED,
  duplicate: DeltaOutcome_Result.DUPLICATE,
  no_open_row: DeltaOutcome_Result.NO_OPEN_ROW,
  stale: DeltaOutcome_Result.STALE,
  rejected: DeltaOutcome_Result.REJECTED,
  already_terminal: DeltaOutcome_Result.ALREADY_TERMINAL,
};

/** The operation an enum value names; undefined for UNSPECIFIED or unknown. */
export function operationOf(value: OperationEnum): Operation | undefined {
  return operationNames.get(value);
}

/** The status an enum value names; undefined for UNSPECIFIED or unknown. */
export function statusOf(value: StatusEnum): Status | undefined {
  return statusNames.get(value);
}

export function statusEnum(status: Status): StatusEnum {
  return statusValues.get(status)!;
}

export function operationEnum(operation: Operation): OperationEnum {
  return operationValues.get(operation)!;
}

export function resultEnum(result: DeltaResult): DeltaOutcome_Result {
  return resultValues[result];
}

/** The name of an enum value as the contract spells it, for messages. */
export function statusLabel(status: Status): string {
  return `STATUS_${status.toUpperCase()}`;
}

/** A lifecycle row as the contract's message. */
export function toLifecycleMessage(row: LifecycleRow): Lifecycle {
  return create(LifecycleSchema, {
    id: row.id,
    deckyName: row.deckyName,
    ...(row.hostUuid === null ? {} : { hostUuid: row.hostUuid }),
    operation: operationEnum(row.operation),
    status: statusEnum(row.status),
    ...(row.error === null ? {} : { error: row.error }),
    startedAt: timestampFromDate(row.startedAt),
    updatedAt: timestampFromDate(row.updatedAt),
    ...(row.completedAt === null
      ? {}
      : { completedAt: timestampFromDate(row.completedAt) }),
    revision: row.revision,
  });
}
