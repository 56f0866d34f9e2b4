import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { beforeAll, describe, expect, test } from "vitest";
import { HostState } from "../../gen/decky/lifecycle/v1/host_pb.js";
import {
  type HeartbeatRequest,
  HeartbeatRequestSchema,
  Operation,
  Status,
  WatchResponse_Kind,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { Role } from "../../gen/decky/lifecycle/v1/token_pb.js";
import { issueToken } from "../../src/auth/token.js";
import {
  type CallerClients,
  clientsWith,
  databaseState,
  storeToken,
} from "../support/callers.js";
import { deckyName, serveThisFile } from "../support/test-server.js";

const server = serveThisFile({ AUTH: "tokens" });

type RoleName = "admin" | "operator" | "viewer" | "worker";
const ROLE_NAMES: RoleName[] = ["admin", "operator", "viewer", "worker"];

/** Who may call what: the table the service must follow. */
const ALLOWED: Record<string, readonly RoleName[]> = {
  "LifecycleService.Accept": ["admin", "operator"],
  "LifecycleService.List": ["admin", "operator", "viewer", "worker"],
  "LifecycleService.Watch": ["admin", "operator", "viewer", "worker"],
  "LifecycleService.Heartbeat": ["admin", "worker"],
  "LifecycleService.Report": ["admin", "operator"],
  "HostService.ListHosts": ["admin"],
  "HostService.EnrollHost": ["admin"],
  "HostService.RotateHostToken": ["admin"],
  "HostService.DecommissionHost": ["admin"],
  "TokenService.CreateToken": ["admin"],
  "TokenService.ListTokens": ["admin"],
  "TokenService.RevokeToken": ["admin"],
};

/** Callers that are not who they claim, and what each is told. */
const UNAUTHENTICATED: Record<string, string> = {
  "no token":
    'this call needs a bearer token: send the header "authorization: Bearer <token>"',
  "a header that is not Bearer":
    'the authorization header must be "Bearer <token>"',
  "a malformed token": "the bearer token is malformed",
  "an unknown token": "the bearer token is not valid",
  "a token with a wrong secret": "the bearer token is not valid",
  "a revoked token": "the bearer token was revoked",
};

let admin: CallerClients;
let workerHost: string;
const authorizations: Record<string, string | undefined> = {};

beforeAll(async () => {
  const adminToken = await storeToken(server.server, "admin", "matrix-admin");
  admin = clientsWith(server.url, `Bearer ${adminToken}`);
  const operator = await admin.tokens.createToken({
    name: "matrix-operator",
    role: Role.OPERATOR,
  });
  const viewer = await admin.tokens.createToken({
    name: "matrix-viewer",
    role: Role.VIEWER,
  });
  const enrolled = await admin.hosts.enrollHost({ name: "matrix-worker" });
  workerHost = enrolled.host!.hostUuid;
  const revoked = await admin.tokens.createToken({
    name: "matrix-revoked",
    role: Role.OPERATOR,
  });
  await admin.tokens.revokeToken({ tokenId: revoked.apiToken!.tokenId });

  const secretLength = "dl_".length + 32 + "_".length;
  Object.assign(authorizations, {
    admin: `Bearer ${adminToken}`,
    operator: `Bearer ${operator.token}`,
    viewer: `Bearer ${viewer.token}`,
    worker: `Bearer ${enrolled.token}`,
    "no token": undefined,
    "a header that is not Bearer": `Basic ${Buffer.from("admin:admin").toString("base64")}`,
    "a malformed token": "Bearer not-a-token",
    "an unknown token": `Bearer ${issueToken().text}`,
    "a token with a wrong secret": `Bearer ${adminToken.slice(0, secretLength)}${issueToken().text.slice(secretLength)}`,
    "a revoked token": `Bearer ${revoked.token}`,
  });
});

function heartbeatMessages(
  ...messages: Parameters<typeof create<typeof HeartbeatRequestSchema>>[1][]
): AsyncIterable<HeartbeatRequest> {
  return (async function* () {
    for (const message of messages) {
      yield create(HeartbeatRequestSchema, message);
    }
  })();
}

async function acceptOne(hostUuid?: string) {
  const name = deckyName("matrix");
  const { rows } = await admin.lifecycle.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: name, ...(hostUuid ? { hostUuid } : {}) }],
  });
  return rows[0]!;
}

/**
 * Each method with a fixture made by the admin before the call, and a call
 * that succeeds when its caller may make it.
 */
const CASES: Record<
  string,
  (clients: CallerClients) => Promise<() => Promise<void>>
> = {
  "LifecycleService.Accept": async (clients) => async () => {
    const response = await clients.lifecycle.accept({
      operation: Operation.DEPLOY,
      targets: [{ deckyName: deckyName("matrix"), hostUuid: workerHost }],
    });
    expect(response.rows.map((row) => row.status)).toEqual([Status.PENDING]);
  },
  "LifecycleService.List": async (clients) => {
    const row = await acceptOne(workerHost);
    return async () => {
      const response = await clients.lifecycle.list({ ids: [row.id] });
      expect(response.rows.map((listed) => listed.id)).toEqual([row.id]);
    };
  },
  "LifecycleService.Watch": async (clients) => {
    const row = await acceptOne(workerHost);
    return async () => {
      const kinds: WatchResponse_Kind[] = [];
      for await (const message of clients.lifecycle.watch({ ids: [row.id] })) {
        kinds.push(message.kind);
        if (message.kind === WatchResponse_Kind.SNAPSHOT_END) break;
      }
      expect(kinds).toEqual([
        WatchResponse_Kind.SNAPSHOT,
        WatchResponse_Kind.SNAPSHOT_END,
      ]);
    };
  },
  "LifecycleService.Heartbeat": async (clients) => {
    const row = await acceptOne(workerHost);
    return async () => {
      const response = await clients.lifecycle.heartbeat(
        heartbeatMessages({
          hostUuid: workerHost,
          agentVersion: "matrix/1",
          deltas: [
            {
              deckyName: row.deckyName,
              operation: Operation.DEPLOY,
              status: Status.RUNNING,
              lifecycleId: row.id,
            },
          ],
        }),
      );
      expect([response.messages, response.applied]).toEqual([1, 1]);
    };
  },
  "LifecycleService.Report": async (clients) => {
    const row = await acceptOne();
    return async () => {
      const response = await clients.lifecycle.report({
        lifecycleId: row.id,
        status: Status.RUNNING,
      });
      expect(response.row?.status).toBe(Status.RUNNING);
    };
  },
  "HostService.ListHosts": async (clients) => async () => {
    const response = await clients.hosts.listHosts({
      states: [HostState.ENROLLED, HostState.ALIVE],
      pageSize: 500,
    });
    expect(response.hosts.map((host) => host.hostUuid)).toContain(workerHost);
  },
  "HostService.EnrollHost": async (clients) => async () => {
    const response = await clients.hosts.enrollHost({ name: "matrix-new" });
    expect(response.host?.state).toBe(HostState.ENROLLED);
  },
  "HostService.RotateHostToken": async (clients) => {
    const { host } = await admin.hosts.enrollHost({ name: "matrix-rotate" });
    return async () => {
      const response = await clients.hosts.rotateHostToken({
        hostUuid: host!.hostUuid,
      });
      expect(response.token).toMatch(/^dl_/);
    };
  },
  "HostService.DecommissionHost": async (clients) => {
    const { host } = await admin.hosts.enrollHost({ name: "matrix-retire" });
    return async () => {
      const response = await clients.hosts.decommissionHost({
        hostUuid: host!.hostUuid,
      });
      expect(response.host?.state).toBe(HostState.DECOMMISSIONED);
    };
  },
  "TokenService.CreateToken": async (clients) => async () => {
    const response = await clients.tokens.createToken({
      name: "matrix-created",
      role: Role.VIEWER,
    });
    expect(response.apiToken?.role).toBe(Role.VIEWER);
  },
  "TokenService.ListTokens": async (clients) => async () => {
    const response = await clients.tokens.listTokens({});
    expect(response.apiTokens.map((token) => token.name)).toContain(
      "matrix-admin",
    );
  },
  "TokenService.RevokeToken": async (clients) => {
    const { apiToken } = await admin.tokens.createToken({
      name: "matrix-to-revoke",
      role: Role.VIEWER,
    });
    return async () => {
      const response = await clients.tokens.revokeToken({
        tokenId: apiToken!.tokenId,
      });
      expect(response.apiToken?.revokedAt).toBeDefined();
    };
  },
};

async function failureOf(call: () => Promise<void>): Promise<ConnectError> {
  try {
    await call();
  } catch (error) {
    return ConnectError.from(error);
  }
  throw new Error("the call succeeded");
}

describe.each(Object.keys(ALLOWED))("%s", (method) => {
  const fullName = `decky.lifecycle.v1.${method}`;

  test.each(ROLE_NAMES)("with a token of role %s", async (role) => {
    const clients = clientsWith(server.url, authorizations[role]);
    const call = await CASES[method]!(clients);
    if (ALLOWED[method]!.includes(role)) {
      await call();
      return;
    }
    const before = await databaseState(server.server);
    const error = await failureOf(call);
    expect([Code[error.code], error.rawMessage]).toEqual([
      Code[Code.PermissionDenied],
      `the ${role} role may not call ${fullName}`,
    ]);
    expect(await databaseState(server.server)).toEqual(before);
  });

  test.each(Object.keys(UNAUTHENTICATED))("with %s", async (caller) => {
    const clients = clientsWith(server.url, authorizations[caller]);
    const call = await CASES[method]!(clients);
    const before = await databaseState(server.server);
    const error = await failureOf(call);
    expect([Code[error.code], error.rawMessage]).toEqual([
      Code[Code.Unauthenticated],
      UNAUTHENTICATED[caller],
    ]);
    expect(await databaseState(server.server)).toEqual(before);
  });
});
