import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  type Client,
  ConnectError,
  createClient,
  type Interceptor,
} from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { HostService } from "../../gen/decky/lifecycle/v1/host_pb.js";
import {
  type HeartbeatRequest,
  HeartbeatRequestSchema,
  type HeartbeatResponse,
  LifecycleService,
  type WatchRequestSchema,
  type WatchResponse,
  WatchResponse_Kind,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { TokenService } from "../../gen/decky/lifecycle/v1/token_pb.js";
import type { Role } from "../../src/auth/roles.js";
import { issueToken } from "../../src/auth/token.js";
import type { RunningServer } from "../../src/server/start-server.js";
import { insertToken } from "../../src/storage/api-tokens.js";
import { query } from "../../src/storage/sql.js";
import { AsyncQueue } from "../../src/worker/async-queue.js";

/** Clients of every service, calling over gRPC as one caller. */
export interface CallerClients {
  readonly lifecycle: Client<typeof LifecycleService>;
  readonly hosts: Client<typeof HostService>;
  readonly tokens: Client<typeof TokenService>;
}

/** Sends `authorization` as it is given; no header when undefined. */
export function authorizationHeader(
  authorization: string | undefined,
): Interceptor {
  return (next) => (request) => {
    if (authorization !== undefined) {
      request.header.set("authorization", authorization);
    }
    return next(request);
  };
}

/**
 * Clients that send `authorization` with every call: `Bearer <token>` for a
 * token, anything else to test what the server does with it.
 */
export function clientsWith(
  url: string,
  authorization: string | undefined,
): CallerClients {
  const transport = createGrpcTransport({
    baseUrl: url,
    interceptors: [authorizationHeader(authorization)],
  });
  return {
    lifecycle: createClient(LifecycleService, transport),
    hosts: createClient(HostService, transport),
    tokens: createClient(TokenService, transport),
  };
}

/**
 * Stores a token straight in the server's database, as the CLI does before
 * a server first starts, and returns its text.
 */
export async function storeToken(
  server: RunningServer,
  role: Exclude<Role, "worker">,
  name = `${role}-token`,
): Promise<string> {
  const issued = issueToken();
  await insertToken(server.orm.em.fork(), {
    id: issued.id,
    name,
    role,
    hostUuid: null,
    secretHash: issued.secretHash,
  });
  return issued.text;
}

/**
 * Everything a call could change, in one comparable value: the revision, the
 * rows and their change log, the tokens and the hosts.
 */
export async function databaseState(server: RunningServer): Promise<unknown> {
  const [state] = await query(
    server.orm.em.fork(),
    `select
       (select value from lifecycle_revision where id = 1) as revision,
       (select count(*) from lifecycle_change) as changes,
       (select coalesce(string_agg(id || ':' || status, ',' order by id), '')
          from decky_lifecycle) as rows,
       (select coalesce(string_agg(id || ':' || (revoked_at is null), ','
                                   order by id), '')
          from api_token) as tokens,
       (select coalesce(string_agg(host_uuid || ':' || state || ':'
                                     || coalesce(last_heartbeat_at::text, '-'),
                                   ',' order by host_uuid), '')
          from worker_host) as hosts`,
  );
  return state;
}

/** An open Heartbeat call whose messages the test sends one by one. */
export interface HeartbeatCall {
  send(message: MessageInitShape<typeof HeartbeatRequestSchema>): void;
  /** Closes the request stream; resolves with the response. */
  close(): Promise<HeartbeatResponse>;
  /** Resolves with the error the call failed with. */
  failure(): Promise<ConnectError>;
}

export function openHeartbeat(clients: CallerClients): HeartbeatCall {
  const queue = new AsyncQueue<HeartbeatRequest>();
  const settled = clients.lifecycle.heartbeat(queue).then(
    (response) => ({ response, error: undefined }),
    (error: unknown) => ({
      response: undefined,
      error: ConnectError.from(error),
    }),
  );
  return {
    send(message) {
      queue.push(create(HeartbeatRequestSchema, message));
    },
    async close() {
      queue.close();
      const outcome = await settled;
      if (outcome.error) throw outcome.error;
      return outcome.response!;
    },
    async failure() {
      const outcome = await settled;
      queue.close();
      if (!outcome.error) throw new Error("the Heartbeat call succeeded");
      return outcome.error;
    },
  };
}

/** An open Watch call: what it received so far, and how it ended. */
export interface WatchCall {
  readonly received: WatchResponse[];
  /** Resolves once a received message satisfies `predicate`. */
  until(predicate: (received: WatchResponse[]) => boolean): Promise<void>;
  /** Resolves with the error the stream ended with; undefined for OK. */
  readonly ended: Promise<ConnectError | undefined>;
  cancel(): void;
}

export function openWatch(
  clients: CallerClients,
  request: MessageInitShape<typeof WatchRequestSchema>,
): WatchCall {
  const abort = new AbortController();
  const received: WatchResponse[] = [];
  const waiters: (() => void)[] = [];
  const ended = (async () => {
    try {
      for await (const message of clients.lifecycle.watch(request, {
        signal: abort.signal,
      })) {
        if (message.kind === WatchResponse_Kind.KEEPALIVE) continue;
        received.push(message);
        for (const wake of waiters.splice(0)) wake();
      }
      return undefined;
    } catch (error) {
      return ConnectError.from(error);
    } finally {
      for (const wake of waiters.splice(0)) wake();
    }
  })();
  let done = false;
  void ended.then(() => {
    done = true;
  });
  return {
    received,
    async until(predicate) {
      while (!predicate(received)) {
        if (done) {
          throw new Error(
            `the Watch stream ended first: ${String(await ended)}`,
          );
        }
        await new Promise<void>((resolve) => waiters.push(resolve));
      }
    },
    ended,
    cancel: () => abort.abort(),
  };
}
