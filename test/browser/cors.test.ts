import http from "node:http";
import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import {
  LifecycleService,
  Operation,
  Status,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { loadSettings, SettingsError } from "../../src/config/settings.js";
import {
  ALLOWED_HEADERS,
  ALLOWED_METHODS,
  bundlePageScript,
  type CorsAnswer,
  corsHeadersOf,
  launchChromium,
  listOnPage,
  openApiClientPage,
  type PageServer,
  recordCors,
  servePage,
  watchOnPage,
} from "../support/browser.js";
import {
  createTestDatabase,
  deckyName,
  startTestServer,
  type TestDatabase,
  type TestServer,
} from "../support/test-server.js";

const LIST_PATH = `/${LifecycleService.typeName}/${LifecycleService.method.list.name}`;

const EXPOSED_HEADERS =
  "Grpc-Status, Grpc-Message, Grpc-Status-Details-Bin, Content-Encoding, Connect-Content-Encoding";

let database: TestDatabase;
let server: TestServer;
let allowedPage: PageServer;
let otherPage: PageServer;
let browser: Browser;

beforeAll(async () => {
  const script = await bundlePageScript("api-client");
  // The same page from two origins: only the first is on the list.
  allowedPage = await servePage(script);
  otherPage = await servePage(script);
  database = await createTestDatabase();
  server = await startTestServer(database, {
    CORS_ALLOWED_ORIGINS: `https://console.example.com, ${allowedPage.origin}`,
  });
  browser = await launchChromium();
});

afterAll(async () => {
  await browser?.close();
  await server?.close();
  await database?.drop();
  await allowedPage?.close();
  await otherPage?.close();
});

/** Sends a request straight to the service, as a browser would send it. */
function send(
  method: string,
  headers: Record<string, string>,
  body = "",
): Promise<CorsAnswer> {
  return new Promise((resolve, reject) => {
    const request = http.request(
      `${server.url}${LIST_PATH}`,
      { method, headers },
      (response) => {
        response.resume();
        response.once("end", () => {
          resolve({
            status: response.statusCode ?? 0,
            headers: corsHeadersOf(response.headers),
          });
        });
      },
    );
    request.once("error", reject);
    request.end(body);
  });
}

function preflight(origin: string): Promise<CorsAnswer> {
  return send("OPTIONS", {
    origin,
    "access-control-request-method": "POST",
    "access-control-request-headers": "content-type,connect-protocol-version",
  });
}

function connectList(origin: string): Promise<CorsAnswer> {
  return send(
    "POST",
    {
      origin,
      "content-type": "application/json",
      "connect-protocol-version": "1",
    },
    JSON.stringify({ deckyName: deckyName("raw") }),
  );
}

/** A page of `pageServer`'s origin, calling the service. */
function openPage(pageServer: PageServer): Promise<Page> {
  return openApiClientPage(browser, pageServer, server.url);
}

describe("CORS_ALLOWED_ORIGINS", () => {
  function settingsErrorOf(value: string): string {
    try {
      loadSettings({ CORS_ALLOWED_ORIGINS: value });
    } catch (error) {
      if (error instanceof SettingsError) return error.message;
      throw error;
    }
    throw new Error(`loadSettings accepted ${value}`);
  }

  test("loadSettings reads a comma-separated list of origins", () => {
    const settings = loadSettings({
      CORS_ALLOWED_ORIGINS:
        "https://console.example.com, http://127.0.0.1:5173,https://[::1]:8443",
    });

    expect(settings.corsAllowedOrigins).toEqual([
      "https://console.example.com",
      "http://127.0.0.1:5173",
      "https://[::1]:8443",
    ]);
  });

  test.each([
    ["https://console.example.com/", "https://console.example.com/"],
    ["https://console.example.com/app", "https://console.example.com/app"],
    ["*", "*"],
    ["console.example.com", "console.example.com"],
    ["https://console.example.com:443", "https://console.example.com:443"],
    ["https://a.example,,https://b.example", ""],
  ])(
    "loadSettings refuses %s, naming the entry that is not an origin",
    (value, entry) => {
      expect(settingsErrorOf(value)).toBe(
        `invalid settings: CORS_ALLOWED_ORIGINS=${JSON.stringify(value)} must be a comma-separated list of origins such as https://console.example.com (scheme, host and port only); ${JSON.stringify(entry)} is not one`,
      );
    },
  );
});

describe("preflight and response headers", () => {
  test("a preflight from an allowed origin is answered 204 with the methods and headers Connect and gRPC-Web send", async () => {
    expect(await preflight(allowedPage.origin)).toEqual({
      status: 204,
      headers: {
        "access-control-allow-origin": allowedPage.origin,
        "access-control-allow-methods": ALLOWED_METHODS,
        "access-control-allow-headers": ALLOWED_HEADERS,
        "access-control-max-age": "7200",
        vary: "Origin",
      },
    });
  });

  test("a preflight from an origin not on the list is refused with 403 and no CORS headers", async () => {
    expect(await preflight(otherPage.origin)).toEqual({
      status: 403,
      headers: { vary: "Origin" },
    });
  });

  test("a call from an allowed origin may read the response and the headers and trailers the protocols use", async () => {
    expect(await connectList(allowedPage.origin)).toEqual({
      status: 200,
      headers: {
        "access-control-allow-origin": allowedPage.origin,
        "access-control-expose-headers": EXPOSED_HEADERS,
        vary: "Origin",
      },
    });
  });

  test("a call from an origin not on the list is answered without any CORS grant", async () => {
    expect(await connectList(otherPage.origin)).toEqual({
      status: 200,
      headers: { vary: "Origin" },
    });
  });
});

describe("a browser", () => {
  test("on an allowed origin lists a row and watches it change live with Connect-Web", async () => {
    const name = deckyName("cors");
    const { rows } = await server.grpc.accept({
      operation: Operation.DEPLOY,
      targets: [{ deckyName: name }],
    });
    const row = rows[0]!;
    const page = await openPage(allowedPage);
    // The row moves once the page has the snapshot, so the change can only
    // reach it live, over the open stream.
    await page.exposeFunction("onWatchMessage", async (entry: string) => {
      if (entry === "SNAPSHOT_END -") {
        await server.grpc.report({
          lifecycleId: row.id,
          status: Status.RUNNING,
        });
      }
    });

    const listed = await listOnPage(page, name);
    const watched = await watchOnPage(page, name, 3);

    expect(listed).toEqual({
      ok: true,
      value: [{ id: row.id, deckyName: name, status: "PENDING" }],
    });
    expect(watched).toEqual({
      ok: true,
      value: ["SNAPSHOT PENDING", "SNAPSHOT_END -", "CHANGE RUNNING"],
    });
    await page.close();
  });

  test("on an allowed origin calls List over gRPC-Web and reads its error code and message", async () => {
    const page = await openPage(allowedPage);

    const listed = await listOnPage(
      page,
      deckyName("cors"),
      "nope",
      "grpc-web",
    );

    expect(listed).toEqual({
      ok: false,
      code: "InvalidArgument",
      message: "page_token is not a token this service issued",
    });
    await page.close();
  });

  test("on an origin not on the list is blocked: List and Watch fail in the page, and the preflight carried no Access-Control-Allow-Origin", async () => {
    const name = deckyName("cors-blocked");
    await server.grpc.accept({
      operation: Operation.DEPLOY,
      targets: [{ deckyName: name }],
    });
    const page = await openPage(otherPage);
    const seen = await recordCors(page, server.url);
    await page.exposeFunction("onWatchMessage", async () => {});

    const listed = await listOnPage(page, name);
    const watched = await watchOnPage(page, name, 2);

    expect(listed).toEqual({
      ok: false,
      code: "Unknown",
      message: "Failed to fetch",
    });
    expect(watched).toEqual({
      ok: false,
      code: "Unknown",
      message: "Failed to fetch",
    });
    // One preflight for each call, each refused without a grant; Chromium
    // names the missing header as the reason.
    expect(seen.preflights).toEqual([
      { status: 403, headers: { vary: "Origin" } },
      { status: 403, headers: { vary: "Origin" } },
    ]);
    expect(new Set(seen.corsErrors)).toEqual(
      new Set(["PreflightMissingAllowOriginHeader"]),
    );
    await page.close();
  });
});
