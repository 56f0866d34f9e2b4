import { createHash, randomUUID } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { beforeAll, expect, test } from "vitest";
import {
  type AuthMode,
  type Credentials,
  identifyCaller,
} from "../../src/auth/authenticate.js";
import type { Caller } from "../../src/rpc/services.js";
import {
  type CallerClients,
  clientsWith,
  storeToken,
} from "../support/callers.js";
import { serveThisFile } from "../support/test-server.js";

const server = serveThisFile({ AUTH: "tokens" });

let admin: CallerClients;
let adminToken: string;

beforeAll(async () => {
  adminToken = await storeToken(server.server, "admin", "pin-admin");
  admin = clientsWith(server.url, `Bearer ${adminToken}`);
});

function fingerprint(label: string): string {
  return createHash("sha256").update(`${label}-${randomUUID()}`).digest("hex");
}

/** Enrols a host, with `pinned` as its certificate when given. */
async function enrol(pinned?: string) {
  const { host, token } = await admin.hosts.enrollHost({
    name: "pin-worker",
    ...(pinned === undefined ? {} : { certificateFingerprint: pinned }),
  });
  return { hostUuid: host!.hostUuid, token, tokenId: tokenIdOf(token) };
}

function tokenIdOf(token: string): string {
  const hex = token.slice(3, 35);
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function identify(
  mode: AuthMode,
  token: string | undefined,
  certificate: string | undefined,
): Promise<Caller> {
  const credentials: Credentials = {
    authorization: token === undefined ? null : `Bearer ${token}`,
    certificateFingerprint: certificate,
  };
  return identifyCaller(server.server.orm.em.fork(), mode, credentials);
}

async function refusal(caller: Promise<Caller>): Promise<[string, string]> {
  try {
    await caller;
  } catch (error) {
    const converted = ConnectError.from(error);
    return [Code[converted.code], converted.rawMessage];
  }
  throw new Error("the caller was accepted");
}

test("a worker token with its host's pinned certificate is that host's worker", async () => {
  const pinned = fingerprint("own");
  const { hostUuid, token, tokenId } = await enrol(pinned);

  expect(await identify("tokens", token, pinned)).toEqual({
    role: "worker",
    name: "pin-worker",
    tokenId,
    hostUuid,
  });
});

test("a worker token with a certificate pinned to another host is refused", async () => {
  const { hostUuid, token } = await enrol(fingerprint("own"));
  const otherPin = fingerprint("other");
  await enrol(otherPin);

  expect(await refusal(identify("tokens", token, otherPin))).toEqual([
    "PermissionDenied",
    `the client certificate is not the one pinned to host ${hostUuid}`,
  ]);
});

test("a worker token with a certificate pinned to no host is refused", async () => {
  const pinnedHost = await enrol(fingerprint("own"));
  const unpinnedHost = await enrol();

  for (const { hostUuid, token } of [pinnedHost, unpinnedHost]) {
    expect(
      await refusal(identify("tokens", token, fingerprint("nobody"))),
    ).toEqual([
      "PermissionDenied",
      `the client certificate is not the one pinned to host ${hostUuid}`,
    ]);
  }
});

test("a worker token without a certificate is refused when its host has one pinned", async () => {
  const { hostUuid, token } = await enrol(fingerprint("own"));

  expect(await refusal(identify("tokens", token, undefined))).toEqual([
    "PermissionDenied",
    `host ${hostUuid} has a client certificate pinned; call with it`,
  ]);
});

test("a worker token of a host with nothing pinned needs no certificate", async () => {
  const { hostUuid, token, tokenId } = await enrol();

  expect(await identify("tokens", token, undefined)).toEqual({
    role: "worker",
    name: "pin-worker",
    tokenId,
    hostUuid,
  });
});

test("an admin token is an admin whatever certificate comes with it", async () => {
  const pinned = fingerprint("own");
  await enrol(pinned);

  for (const certificate of [undefined, pinned, fingerprint("nobody")]) {
    expect(await identify("tokens", adminToken, certificate)).toEqual({
      role: "admin",
      name: "pin-admin",
      tokenId: tokenIdOf(adminToken),
    });
  }
});

test("the bearer scheme is read in any case", async () => {
  const caller = await identifyCaller(server.server.orm.em.fork(), "tokens", {
    authorization: `bearer ${adminToken}`,
    certificateFingerprint: undefined,
  });

  expect(caller.role).toBe("admin");
});

test("with AUTH=none a certificate pinned to a host makes its caller that host's worker", async () => {
  const pinned = fingerprint("own");
  const { hostUuid } = await enrol(pinned);

  expect(await identify("none", undefined, pinned)).toEqual({
    role: "worker",
    name: `certificate of host ${hostUuid}`,
    hostUuid,
  });
});

test("with AUTH=none any other caller is an anonymous admin, and tokens are not read", async () => {
  for (const [token, certificate] of [
    [undefined, undefined],
    [undefined, fingerprint("nobody")],
    ["not-a-token", undefined],
  ]) {
    expect(await identify("none", token, certificate)).toEqual({
      role: "admin",
      name: "anonymous",
    });
  }
});

test("with AUTH=none the certificate of a decommissioned host is refused", async () => {
  const pinned = fingerprint("own");
  const { hostUuid } = await enrol(pinned);
  await admin.hosts.decommissionHost({ hostUuid });

  expect(await refusal(identify("none", undefined, pinned))).toEqual([
    "PermissionDenied",
    `host ${hostUuid} was decommissioned; its calls are refused`,
  ]);
});
