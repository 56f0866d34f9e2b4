import { createHash } from "node:crypto";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { ConnectRouter, HandlerContext } from "@connectrpc/connect";
import {
  AcceptResponseSchema,
  LifecycleService,
  ListResponseSchema,
  ReportResponseSchema,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { refuseRevokedCaller } from "../auth/authenticate.js";
import { confineToCallerHost } from "../auth/worker-scope.js";
import { LifecycleError } from "../domain/errors.js";
import type { LifecycleRow } from "../domain/lifecycle.js";
import {
  claimAcceptKey,
  storeAcceptResponse,
} from "../storage/accept-requests.js";
import { refuseDecommissionedHosts } from "../storage/host-enrolment.js";
import { listRows } from "../storage/lifecycle-reads.js";
import { createRows, findRow, moveRow } from "../storage/lifecycle-writes.js";
import { inWriteTransaction } from "../storage/write-transaction.js";
import { statusLabel, toLifecycleMessage } from "./convert.js";
import { applyHeartbeats } from "./heartbeat.js";
import {
  type Caller,
  callEntityManager,
  callerKey,
  type Services,
} from "./services.js";
import {
  type AcceptCommand,
  validateAccept,
  validateList,
  validateReport,
  validateWatch,
} from "./validate.js";
import { watchRows } from "./watch.js";

function callerOf(context: HandlerContext): Caller {
  const caller = context.values.get(callerKey);
  if (!caller) throw new Error("the call has no caller");
  return caller;
}

function acceptBodyHash(command: AcceptCommand): string {
  return createHash("sha256")
    .update(JSON.stringify([command.operation, command.targets]))
    .digest("base64url");
}

/** Registers LifecycleService's handlers: validate, call storage, answer. */
export function lifecycleRoutes(services: Services) {
  const { feed, pageTokens, streams } = services;
  return (router: ConnectRouter) =>
    router.service(LifecycleService, {
      async accept(request, context) {
        const command = validateAccept(request);
        const { result, changes } = await inWriteTransaction(
          callEntityManager(context),
          async (tx) => {
            if (command.requestId !== undefined) {
              const first = await claimAcceptKey(
                tx,
                command.requestId,
                acceptBodyHash(command),
              );
              if (first) return fromBinary(AcceptResponseSchema, first);
            }
            await refuseDecommissionedHosts(tx.em, command.targets);
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
        const validated = validateList(request);
        const query = {
          ...validated,
          filter: await confineToCallerHost(
            callEntityManager(context),
            callerOf(context),
            validated.filter,
          ),
        };
        const cursor =
          query.pageToken === undefined
            ? undefined
            : pageTokens.read(query.filter, query.pageToken);
        const rows = await listRows(
          callEntityManager(context),
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

      async *watch(request, context) {
        const query = validateWatch(request);
        const caller = callerOf(context);
        // Ended early, with the reason as the error, when the caller's token
        // is revoked or its host decommissioned. Registered before the caller
        // is checked again, so a revocation either ends this stream or is
        // seen by the check.
        const ended = new AbortController();
        const release = streams.openWatch(caller, ended);
        try {
          const signal = AbortSignal.any([context.signal, ended.signal]);
          const em = callEntityManager(context, signal);
          await refuseRevokedCaller(em, caller);
          const filter = await confineToCallerHost(em, caller, query.filter);
          yield* watchRows(
            { ...query, filter },
            em,
            feed,
            services.keepaliveIntervalMs,
            signal,
            services.shutdownSignal,
          );
        } finally {
          release();
        }
        ended.signal.throwIfAborted();
      },

      heartbeat(requests, context) {
        return applyHeartbeats(
          requests,
          callEntityManager(context),
          feed,
          services.shutdownSignal,
          {
            caller: callerOf(context),
            streams,
            idleMs: services.heartbeatIdleMs,
          },
        );
      },

      async report(request, context) {
        const command = validateReport(request);
        const { result, changes } = await inWriteTransaction(
          callEntityManager(context),
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
