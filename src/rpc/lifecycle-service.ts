import { createHash } from "node:crypto";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { ConnectRouter, HandlerContext } from "@connectrpc/connect";
import {
  AcceptResponseSchema,
  LifecycleService,
  ListResponseSchema,
  ReportResponseSchema,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { LifecycleError } from "../domain/errors.js";
import type { LifecycleRow } from "../domain/lifecycle.js";
import {
  claimAcceptKey,
  storeAcceptResponse,
} from "../storage/accept-requests.js";
import { listRows } from "../storage/lifecycle-reads.js";
import { createRows, findRow, moveRow } from "../storage/lifecycle-writes.js";
import { inWriteTransaction } from "../storage/write-transaction.js";
import { statusLabel, toLifecycleMessage } from "./convert.js";
import { applyHeartbeats } from "./heartbeat.js";
import { entityManagerKey, type Services } from "./services.js";
import {
  type AcceptCommand,
  validateAccept,
  validateList,
  validateReport,
  validateWatch,
} from "./validate.js";
import { watchRows } from "./watch.js";

function entityManager(context: HandlerContext) {
  const em = context.values.get(entityManagerKey);
  if (!em) throw new Error("the call has no entity manager");
  return em;
}

function acceptBodyHash(command: AcceptCommand): string {
  return createHash("sha256")
    .update(JSON.stringify([command.operation, command.targets]))
    .digest("base64url");
}

/** Registers LifecycleService's handlers: validate, call storage, answer. */
export function lifecycleRoutes(services: Services) {
  const { feed, pageTokens } = services;
  return (router: ConnectRouter) =>
    router.service(LifecycleService, {
      async accept(request, context) {
        const command = validateAccept(request);
        const { result, changes } = await inWriteTransaction(
          entityManager(context),
          async (tx) => {
            if (command.requestId !== undefined) {
              const first = await claimAcceptKey(
                tx,
                command.requestId,
                acceptBodyHash(command),
              );
              if (first) return fromBinary(AcceptResponseSchema, first);
            }
            const rows = await createRows(
              tx,
              command.operation,
              command.targets,
            );
            const response = create(AcceptResponseSchema, {
              lifecycleIds: rows.map((row) => row.id),
              rows: rows.map(toLifecycleMessage),
            });
            if (command.requestId !== undefined) {
              await storeAcceptResponse(
                tx,
                command.requestId,
                toBinary(AcceptResponseSchema, response),
              );
            }
            return response;
          },
        );
        feed.publish(changes);
        return result;
      },

      async list(request, context) {
        const query = validateList(request);
        const cursor =
          query.pageToken === undefined
            ? undefined
            : pageTokens.read(query.filter, query.pageToken);
        const rows = await listRows(
          entityManager(context),
          query.filter,
          cursor,
          query.pageSize + 1,
        );
        const page = rows.slice(0, query.pageSize);
        const last = page.at(-1);
        return create(ListResponseSchema, {
          rows: page.map(toLifecycleMessage),
          nextPageToken:
            rows.length > query.pageSize && last
              ? pageTokens.issue(query.filter, last)
              : "",
        });
      },

      watch(request, context) {
        return watchRows(
          validateWatch(request),
          entityManager(context),
          feed,
          services.keepaliveIntervalMs,
          context.signal,
          services.shutdownSignal,
        );
      },

      heartbeat(requests, context) {
        return applyHeartbeats(
          requests,
          entityManager(context),
          feed,
          services.shutdownSignal,
        );
      },

      async report(request, context) {
        const command = validateReport(request);
        const { result, changes } = await inWriteTransaction(
          entityManager(context),
          async (tx): Promise<LifecycleRow> => {
            const moved = await moveRow(tx, command.lifecycleId, {
              status: command.status,
              error: command.error,
              completedAt: null,
            });
            if (moved) return moved;
            const row = await findRow(tx, command.lifecycleId);
            if (!row) {
              throw new LifecycleError(
                "not_found",
                `lifecycle row ${command.lifecycleId} does not exist`,
              );
            }
            if (row.status === command.status) return row;
            throw new LifecycleError(
              "failed_precondition",
              `lifecycle row ${row.id} is ${statusLabel(row.status)} and cannot move to ${statusLabel(command.status)}`,
            );
          },
        );
        feed.publish(changes);
        return create(ReportResponseSchema, {
          row: toLifecycleMessage(result),
        });
      },
    });
}
