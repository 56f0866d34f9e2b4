import type {
  AcceptRequest,
  ListRequest,
  ReportRequest,
  WatchRequest,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { Operation as OperationEnum } from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import {
  cutError,
  DECKY_NAME_PATTERN,
  isUuid,
  type Operation,
  type Status,
} from "../domain/lifecycle.js";
import type { RowFilter } from "../domain/row-filter.js";
import type { NewRow } from "../storage/lifecycle-writes.js";
import { operationOf, statusOf } from "./convert.js";
import { checkText, invalidArgument, quote } from "./invalid.js";

export const MAX_TARGETS = 500;
export const MAX_IDS = 200;
export const DEFAULT_PAGE_SIZE = 50;
export const MAX_PAGE_SIZE = 500;
const MAX_REQUEST_ID_LENGTH = 200;
/** Error text longer than this is refused rather than cut: it is not a message. */
const MAX_ERROR_INPUT_LENGTH = 1 << 20;

export function checkDeckyName(field: string, value: string): string {
  if (!DECKY_NAME_PATTERN.test(value)) {
    throw invalidArgument(
      `${field} ${quote(value)} must match ${DECKY_NAME_PATTERN.source}`,
    );
  }
  return value;
}

/** A UUID in lower case, or INVALID_ARGUMENT naming the field. */
export function checkUuid(field: string, value: string): string {
  if (!isUuid(value)) {
    throw invalidArgument(`${field} ${quote(value)} is not a UUID`);
  }
  return value.toLowerCase();
}

function checkOperation(field: string, value: OperationEnum): Operation {
  const operation = operationOf(value);
  if (!operation) {
    throw invalidArgument(
      `${field} must be OPERATION_DEPLOY or OPERATION_MUTATE, not ${value}`,
    );
  }
  return operation;
}

/** An operation filter: UNSPECIFIED matches every operation. */
function optionalOperation(value: OperationEnum): Operation | undefined {
  return value === OperationEnum.UNSPECIFIED
    ? undefined
    : checkOperation("operation", value);
}

function checkIds(ids: readonly string[], required: boolean): string[] {
  if (required && ids.length === 0) {
    throw invalidArgument("ids must name at least one lifecycle row");
  }
  if (ids.length > MAX_IDS) {
    throw invalidArgument(
      `ids has ${ids.length} entries; at most ${MAX_IDS} are allowed`,
    );
  }
  return [...new Set(ids.map((id, index) => checkUuid(`ids[${index}]`, id)))];
}

/** A validated Accept. */
export interface AcceptCommand {
  readonly operation: Operation;
  readonly targets: NewRow[];
  readonly requestId: string | undefined;
}

export function validateAccept(request: AcceptRequest): AcceptCommand {
  const operation = checkOperation("operation", request.operation);
  if (request.targets.length === 0 || request.targets.length > MAX_TARGETS) {
    throw invalidArgument(
      `targets has ${request.targets.length} entries; between 1 and ${MAX_TARGETS} are allowed`,
    );
  }
  const seen = new Map<string, number>();
  const targets = request.targets.map((target, index) => {
    const deckyName = checkDeckyName(
      `targets[${index}].decky_name`,
      target.deckyName,
    );
    const first = seen.get(deckyName);
    if (first !== undefined) {
      throw invalidArgument(
        `targets[${index}].decky_name ${quote(deckyName)} repeats targets[${first}]; a decky may appear once per request`,
      );
    }
    seen.set(deckyName, index);
    return {
      deckyName,
      hostUuid:
        target.hostUuid === undefined
          ? null
          : checkUuid(`targets[${index}].host_uuid`, target.hostUuid),
    };
  });
  if (request.requestId !== "") {
    checkText("request_id", request.requestId, MAX_REQUEST_ID_LENGTH);
  }
  return {
    operation,
    targets,
    requestId: request.requestId === "" ? undefined : request.requestId,
  };
}

/** The decky_name, host_uuid and operation filters List and Watch share. */
function fieldFilter(request: {
  readonly deckyName?: string | undefined;
  readonly hostUuid?: string | undefined;
  readonly operation: OperationEnum;
}): RowFilter {
  const operation = optionalOperation(request.operation);
  return {
    ...(request.deckyName === undefined
      ? {}
      : { deckyName: checkDeckyName("decky_name", request.deckyName) }),
    ...(request.hostUuid === undefined
      ? {}
      : { hostUuid: checkUuid("host_uuid", request.hostUuid) }),
    ...(operation === undefined ? {} : { operation }),
  };
}

/** A validated List. */
export interface ListQuery {
  readonly filter: RowFilter;
  readonly pageSize: number;
  readonly pageToken: string | undefined;
}

export function validateList(request: ListRequest): ListQuery {
  const statuses = request.statuses.map((value, index) => {
    const status = statusOf(value);
    if (!status) {
      throw invalidArgument(
        `statuses[${index}] must be a known status other than STATUS_UNSPECIFIED, not ${value}`,
      );
    }
    return status;
  });
  if (request.pageSize < 0) {
    throw invalidArgument(`page_size ${request.pageSize} must not be negative`);
  }
  const filter: RowFilter = {
    ids: checkIds(request.ids, false),
    ...fieldFilter(request),
    statuses: [...new Set(statuses)],
  };
  return {
    filter,
    pageSize: Math.min(request.pageSize || DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE),
    pageToken: request.pageToken === "" ? undefined : request.pageToken,
  };
}

/** A validated Watch: by ids, or by filter. */
export interface WatchQuery {
  readonly ids: string[];
  readonly filter: RowFilter;
  readonly afterRevision: bigint;
}

export function validateWatch(request: WatchRequest): WatchQuery {
  if (request.afterRevision < 0n) {
    throw invalidArgument(
      `after_revision ${request.afterRevision} must not be negative`,
    );
  }
  const filter = fieldFilter(request);
  const ids = checkIds(request.ids, false);
  if (ids.length > 0 && Object.keys(filter).length > 0) {
    throw invalidArgument(
      "ids cannot be combined with host_uuid, decky_name or operation; watch by ids or by filter",
    );
  }
  return {
    ids,
    filter: ids.length > 0 ? { ids } : filter,
    afterRevision: request.afterRevision,
  };
}

/** A validated Report. */
export interface ReportCommand {
  readonly lifecycleId: string;
  readonly status: Status;
  readonly error: string | null;
}

export function validateReport(request: ReportRequest): ReportCommand {
  const lifecycleId = checkUuid("lifecycle_id", request.lifecycleId);
  const status = statusOf(request.status);
  if (!status) {
    throw invalidArgument(
      `status must be a known status other than STATUS_UNSPECIFIED, not ${request.status}`,
    );
  }
  if (request.error !== undefined) {
    if (status !== "failed") {
      throw invalidArgument("error may be set only with STATUS_FAILED");
    }
    checkText("error", request.error, MAX_ERROR_INPUT_LENGTH);
  }
  return {
    lifecycleId,
    status,
    error: request.error === undefined ? null : cutError(request.error),
  };
}
