import { randomUUID } from "node:crypto";
import { toJsonString } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import { beforeAll, expect, test } from "vitest";
import {
  LifecycleService,
  WatchResponse_Kind,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import {
  ListTokensResponseSchema,
  Role,
} from "../../gen/decky/lifecycle/v1/token_pb.js";
import {
  authorizationHeader,
  type CallerClients,
  clientsWith,
  databaseState,
  openWatch,
  storeToken,
} from "../support/callers.js";
import { serveThisFile } from "../support/test-server.js";

const server = serveThisFile({ AUTH: "tokens" });

let admin: CallerClients;

beforeAll(async () => {
  admin = clientsWith(
    server.url,
    `Bearer ${await storeToken(server.server, "admin", "tokens-admin")}`,
  );
});

async function refusal(call: Promise<unknown>): Promise<[string, string]> {
  try {
    await call;
  } catch (error) {
    const converted = ConnectError.from(error);
    return [Code[converted.code], converted.rawMessage];
  }
  throw new Error("the call succeeded");
}

test("CreateToken returns the token once with what it stores about it", async () => {
  const before = Date.now();
  const { apiToken, token } = await admin.tokens.createToken({
    name: "deployer",
    role: Role.OPERATOR,
  });

  expect(apiToken).toMatchObject({ name: "deployer", role: Role.OPERATOR });
  expect(apiToken!.hostUuid).toBeUndefined();
  expect(apiToken!.revokedAt).toBeUndefined();
  expect(timestampDate(apiToken!.createdAt!).getTime()).toBeGreaterThan(
    before - 1000,
  );
  expect(token.slice(3, 35)).toBe(apiToken!.tokenId.replaceAll("-", ""));

  const { apiTokens } = await admin.tokens.listTokens({ pageSize: 500 });
  expect(apiTokens.find((t) => t.tokenId === apiToken!.tokenId)).toEqual(
    apiToken,
  );
  expect(
    toJsonString(ListTokensResponseSchema, {
      $typeName: ListTokensResponseSchema.typeName,
      apiTokens,
      nextPageToken: "",
    }),
  ).not.toContain(token.slice(36));
});

test("CreateToken refuses worker tokens, a missing role and an empty name", async () => {
  const before = await databaseState(server.server);

  expect(
    await refusal(admin.tokens.createToken({ name: "w", role: Role.WORKER })),
  ).toEqual([
    "InvalidArgument",
    "role ROLE_WORKER tokens come from EnrollHost and RotateHostToken, which bind them to a host",
  ]);
  expect(await refusal(admin.tokens.createToken({ name: "none" }))).toEqual([
    "InvalidArgument",
    "role must be ROLE_ADMIN, ROLE_OPERATOR or ROLE_VIEWER, not 0",
  ]);
  expect(
    await refusal(admin.tokens.createToken({ name: " ", role: Role.VIEWER })),
  ).toEqual(["InvalidArgument", "name must not be empty"]);
  expect(await databaseState(server.server)).toEqual(before);
});

test("ListTokens pages by token id and leaves revoked tokens out unless asked", async () => {
  const made = [];
  for (const name of ["page-a", "page-b", "page-c"]) {
    made.push((await admin.tokens.createToken({ name, role: Role.VIEWER }))!);
  }
  await admin.tokens.revokeToken({ tokenId: made[1]!.apiToken!.tokenId });

  const seen: string[] = [];
  let pageToken = "";
  do {
    const page = await admin.tokens.listTokens({ pageSize: 1, pageToken });
    expect(page.apiTokens.length).toBeLessThanOrEqual(1);
    seen.push(...page.apiTokens.map((token) => token.tokenId));
    pageToken = page.nextPageToken;
  } while (pageToken !== "");
  const all = await admin.tokens.listTokens({
    showRevoked: true,
    pageSize: 500,
  });

  expect(seen).toEqual([...seen].sort());
  expect(seen).toContain(made[0]!.apiToken!.tokenId);
  expect(seen).not.toContain(made[1]!.apiToken!.tokenId);
  expect(all.apiTokens.map((token) => token.tokenId)).toContain(
    made[1]!.apiToken!.tokenId,
  );
  expect(
    await refusal(admin.tokens.listTokens({ pageToken: "forged" })),
  ).toEqual([
    "InvalidArgument",
    "page_token is not a token this service issued",
  ]);
});

test("RevokeToken ends the token's open streams and keeps the first revocation time", async () => {
  const { apiToken, token } = await admin.tokens.createToken({
    name: "short-lived",
    role: Role.VIEWER,
  });
  const viewer = clientsWith(server.url, `Bearer ${token}`);
  const watch = openWatch(viewer, {});
  await watch.until((received) =>
    received.some((m) => m.kind === WatchResponse_Kind.SNAPSHOT_END),
  );

  const first = await admin.tokens.revokeToken({
    tokenId: apiToken!.tokenId,
  });
  const again = await admin.tokens.revokeToken({
    tokenId: apiToken!.tokenId,
  });

  const ended = await watch.ended;
  expect(ended && [Code[ended.code], ended.rawMessage]).toEqual([
    "Unauthenticated",
    "the bearer token of this stream was revoked",
  ]);
  expect(first.apiToken!.revokedAt).toBeDefined();
  expect(again).toEqual(first);
  expect(await refusal(viewer.lifecycle.list({}))).toEqual([
    "Unauthenticated",
    "the bearer token was revoked",
  ]);
});

test("RevokeToken refuses a token that does not exist", async () => {
  const tokenId = randomUUID();

  expect(await refusal(admin.tokens.revokeToken({ tokenId }))).toEqual([
    "NotFound",
    `token ${tokenId} does not exist`,
  ]);
  expect(await refusal(admin.tokens.revokeToken({ tokenId: "t-1" }))).toEqual([
    "InvalidArgument",
    'token_id "t-1" is not a UUID',
  ]);
});

test("a bearer token works over Connect and gRPC-Web as over gRPC", async () => {
  const { token } = await admin.tokens.createToken({
    name: "browser",
    role: Role.VIEWER,
  });
  for (const transport of [
    createConnectTransport({
      baseUrl: server.url,
      httpVersion: "1.1",
      interceptors: [authorizationHeader(`Bearer ${token}`)],
    }),
    createGrpcWebTransport({
      baseUrl: server.url,
      httpVersion: "1.1",
      interceptors: [authorizationHeader(`Bearer ${token}`)],
    }),
  ]) {
    const client = createClient(LifecycleService, transport);
    await expect(client.list({})).resolves.toBeDefined();
    expect(
      await refusal(
        client.accept({ targets: [{ deckyName: "x" }], operation: 1 }),
      ),
    ).toEqual([
      "PermissionDenied",
      "the viewer role may not call decky.lifecycle.v1.LifecycleService.Accept",
    ]);
  }
});
