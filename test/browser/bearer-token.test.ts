import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { Operation } from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import {
  ALLOWED_HEADERS,
  ALLOWED_METHODS,
  bundlePageScript,
  launchChromium,
  listOnPage,
  openApiClientPage,
  type PageServer,
  recordCors,
  servePage,
  useTokenOnPage,
  watchOnPage,
} from "../support/browser.js";
import { clientsWith, storeToken } from "../support/callers.js";
import {
  createTestDatabase,
  deckyName,
  startTestServer,
  type TestDatabase,
  type TestServer,
} from "../support/test-server.js";

let database: TestDatabase;
let server: TestServer;
let pageServer: PageServer;
let browser: Browser;
let adminToken: string;
let viewerToken: string;

beforeAll(async () => {
  pageServer = await servePage(await bundlePageScript("api-client"));
  database = await createTestDatabase();
  server = await startTestServer(database, {
    AUTH: "tokens",
    CORS_ALLOWED_ORIGINS: pageServer.origin,
  });
  adminToken = await storeToken(server.server, "admin", "browser-admin");
  viewerToken = await storeToken(server.server, "viewer", "browser-viewer");
  browser = await launchChromium();
});

afterAll(async () => {
  await browser?.close();
  await server?.close();
  await database?.drop();
  await pageServer?.close();
});

/** A new decky with one open deploy row, accepted by an admin over gRPC. */
async function acceptOne(prefix: string) {
  const admin = clientsWith(server.url, `Bearer ${adminToken}`);
  const name = deckyName(prefix);
  const { rows } = await admin.lifecycle.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: name }],
  });
  return { name, id: rows[0]!.id };
}

/** A page from the allowed origin; its Watch messages need no action. */
async function openPage(): Promise<Page> {
  const page = await openApiClientPage(browser, pageServer, server.url);
  await page.exposeFunction("onWatchMessage", async () => {});
  return page;
}

/** The service's answer to a preflight from the page's origin. */
function grantedPreflight() {
  return {
    status: 204,
    headers: {
      "access-control-allow-origin": pageServer.origin,
      "access-control-allow-methods": ALLOWED_METHODS,
      "access-control-allow-headers": ALLOWED_HEADERS,
      "access-control-max-age": "7200",
      vary: "Origin",
    },
  };
}

/** The headers each protocol's calls make Chromium ask a preflight for. */
const PROTOCOL_HEADERS: Record<string, string> = {
  connect: "connect-protocol-version,content-type",
  "grpc-web": "content-type,x-grpc-web,x-user-agent",
};

describe.each(["connect", "grpc-web"])(
  "with AUTH=tokens, a browser on an allowed origin using %s",
  (protocol) => {
    test("sends a viewer's bearer token through the preflight, lists the row and watches it to SNAPSHOT_END", async () => {
      const { name, id } = await acceptOne("bearer");
      const page = await openPage();
      const seen = await recordCors(page, server.url);
      await useTokenOnPage(page, viewerToken);

      const listed = await listOnPage(page, name, "", protocol);
      const watched = await watchOnPage(page, name, 2, protocol);

      expect(listed).toEqual({
        ok: true,
        value: [{ id, deckyName: name, status: "PENDING" }],
      });
      expect(watched).toEqual({
        ok: true,
        value: ["SNAPSHOT PENDING", "SNAPSHOT_END -"],
      });
      // One preflight each for List and Watch, asking for Authorization.
      expect(seen).toEqual({
        preflightRequests: [
          `authorization,${PROTOCOL_HEADERS[protocol]}`,
          `authorization,${PROTOCOL_HEADERS[protocol]}`,
        ],
        preflights: [grantedPreflight(), grantedPreflight()],
        corsErrors: [],
      });
      await page.close();
    });

    test("without a token gets Unauthenticated and the server's message from List and Watch", async () => {
      const { name } = await acceptOne("no-token");
      const page = await openPage();
      const seen = await recordCors(page, server.url);

      const listed = await listOnPage(page, name, "", protocol);
      const watched = await watchOnPage(page, name, 2, protocol);

      const refused = {
        ok: false,
        code: "Unauthenticated",
        message:
          'this call needs a bearer token: send the header "authorization: Bearer <token>"',
      };
      expect(listed).toEqual(refused);
      expect(watched).toEqual(refused);
      // CORS granted both calls; the server refused them for want of a token.
      expect(seen).toEqual({
        preflightRequests: [
          PROTOCOL_HEADERS[protocol],
          PROTOCOL_HEADERS[protocol],
        ],
        preflights: [grantedPreflight(), grantedPreflight()],
        corsErrors: [],
      });
      await page.close();
    });
  },
);
