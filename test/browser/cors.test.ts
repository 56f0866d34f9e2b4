import http from "node:http";
import type { Browser, CDPSession, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import {
  LifecycleService,
  Operation,
  Status,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { loadSettings, SettingsError } from "../../src/config/settings.js";
import {
  bundlePageScript,
  launchChromium,
  type PageServer,
  servePage,
} from "../support/browser.js";
import {
  createTestDatabase,
  deckyName,
  startTestServer,
  type TestDatabase,
  type TestServer,
} from "../support/test-server.js";

const LIST_PATH = `/${LifecycleService.typeName}/${LifecycleService.method.list.name}`;

const ALLOWED_METHODS = "POST, GET";
const ALLOWED_HEADERS =
  "Content-Type, Connect-Protocol-Version, Connect-Timeout-Ms, Connect-Content-Encoding, Connect-Accept-Encoding, Content-Encoding, Accept-Encoding, Grpc-Message-Type, X-Grpc-Web, X-User-Agent, Grpc-Timeout, Authorization";
const EXPOSED_HEADERS =
  "Grpc-Status, Grpc-Message, Grpc-Status-Details-Bin, Content-Encoding, Connect-Content-Encoding";

/** What a page's `window.lifecycle` offers (test/browser/page/api-client.ts). */
interface PageApi {
  list(
    deckyName: string,
    pageToken?: string,
    protocol?: string,
  ): Promise<Outcome<unknown>>;
  watch(deckyName: string, count: number): Promise<Outcome<string[]>>;
}

type Outcome<T> =
  | { ok: true; value: T }
  | { ok: false; code: string; message: string };

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

/** A response's status and the headers that CORS is made of. */
interface CorsAnswer {
  readonly status: number;
  readonly headers: Record<string, string>;
}

/** The CORS headers among `headers`, and Vary, by lower-case name. */
function corsHeadersOf(
  headers: Record<string, unknown>,
): Record<string, string> {
  return Object.fromEntries(
    Object.entries(headers)
      .map(([name, value]) => [name.toLowerCase(), String(value)] as const)
      .filter(
        ([name]) => name.startsWith("access-control-") || name === "vary",
      ),
  );
}

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

/** A page of `page` server's origin, calling the service. */
async function openPage(pageServer: PageServer): Promise<Page> {
  const page = await browser.newPage();
  await page.goto(`${pageServer.origin}/?api=${server.url}`);
  await page.waitForFunction(() => "lifecycle" in window);
  return page;
}

/** The page's List, on Connect or, with `protocol` "grpc-web", gRPC-Web. */
function list(
  page: Page,
  name: string,
  pageToken = "",
  protocol = "connect",
): Promise<Outcome<unknown>> {
  return page.evaluate(
    ([n, token, p]) =>
      (window as unknown as { lifecycle: PageApi }).lifecycle.list(n, token, p),
    [name, pageToken, protocol] as const,
  );
}

/** The page's Watch of `name`'s open rows, until `count` messages came. */
function watch(
  page: Page,
  name: string,
  count: number,
): Promise<Outcome<string[]>> {
  return page.evaluate(
    ([n, c]) =>
      (window as unknown as { lifecycle: PageApi }).lifecycle.watch(n, c),
    [name, count] as const,
  );
}

/** The preflights and CORS failures Chromium reports for `page`. */
async function recordCors(page: Page) {
  const devtools: CDPSession = await page.context().newCDPSession(page);
  await devtools.send("Network.enable");
  const preflights: CorsAnswer[] = [];
  const corsErrors: string[] = [];
  devtools.on("Network.responseReceived", ({ type, response }) => {
    if (type === "Preflight" && response.url.startsWith(server.url)) {
      preflights.push({
        status: response.status,
        headers: corsHeadersOf(response.headers),
      });
    }
  });
  devtools.on("Network.loadingFailed", ({ corsErrorStatus }) => {
    if (corsErrorStatus) corsErrors.push(corsErrorStatus.corsError);
  });
  return { preflights, corsErrors };
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

    const listed = await list(page, name);
    const watched = await watch(page, name, 3);

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

    const listed = await list(page, deckyName("cors"), "nope", "grpc-web");

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
    const seen = await recordCors(page);
    await page.exposeFunction("onWatchMessage", async () => {});

    const listed = await list(page, name);
    const watched = await watch(page, name, 2);

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
