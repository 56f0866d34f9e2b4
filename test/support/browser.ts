import { once } from "node:events";
import { existsSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { build } from "esbuild";
import {
  type Browser,
  type CDPSession,
  chromium,
  type Page,
} from "playwright-core";

const CHROMIUM = "/usr/bin/chromium";

/** Debian's Chromium, headless, as the browser tests drive it. */
export async function launchChromium(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `${CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)`,
    );
  }
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
}

/** A page script from test/browser/page, bundled for the browser. */
export async function bundlePageScript(name: string): Promise<string> {
  const bundle = await build({
    entryPoints: [
      new URL(`../browser/page/${name}.ts`, import.meta.url).pathname,
    ],
    bundle: true,
    format: "esm",
    platform: "browser",
    write: false,
  });
  return bundle.outputFiles[0]!.text;
}

/** A page server: the origin a browser page comes from. */
export interface PageServer {
  /** Such as http://127.0.0.1:41234, as a browser sends it in Origin. */
  readonly origin: string;
  close(): Promise<void>;
}

/**
 * Serves a page that runs `script` as a module, on a free port of
 * 127.0.0.1; every query string is the page's to read.
 */
export async function servePage(script: string): Promise<PageServer> {
  const server = http.createServer((request, response) => {
    const path = new URL(request.url ?? "/", "http://page").pathname;
    if (path === "/") {
      response.writeHead(200, { "content-type": "text/html" });
      response.end(
        '<!doctype html><script type="module" src="/page.js"></script>',
      );
    } else if (path === "/page.js") {
      response.writeHead(200, { "content-type": "text/javascript" });
      response.end(script);
    } else {
      response.writeHead(404);
      response.end();
    }
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  return {
    origin: `http://127.0.0.1:${port}`,
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** A call's outcome in a page: its value, or its error's code and message. */
export type Outcome<T> =
  | { ok: true; value: T }
  | { ok: false; code: string; message: string };

/** What a page's `window.lifecycle` offers (test/browser/page/api-client.ts). */
interface ApiClientPage {
  useToken(token: string): void;
  list(
    deckyName: string,
    pageToken: string,
    protocol: string,
  ): Promise<Outcome<unknown>>;
  watch(
    deckyName: string,
    count: number,
    protocol: string,
  ): Promise<Outcome<string[]>>;
}

/**
 * A new page, in a context of its own, running api-client.ts from
 * `pageServer` against the service at `serviceUrl`.
 */
export async function openApiClientPage(
  browser: Browser,
  pageServer: PageServer,
  serviceUrl: string,
): Promise<Page> {
  const page = await browser.newPage();
  await page.goto(`${pageServer.origin}/?api=${serviceUrl}`);
  await page.waitForFunction(() => "lifecycle" in window);
  return page;
}

/** Makes the page send `authorization: Bearer <token>` with every call. */
export function useTokenOnPage(page: Page, token: string): Promise<void> {
  return page.evaluate(
    (t) =>
      (window as unknown as { lifecycle: ApiClientPage }).lifecycle.useToken(t),
    token,
  );
}

/** The page's List, on Connect or, with `protocol` "grpc-web", gRPC-Web. */
export function listOnPage(
  page: Page,
  name: string,
  pageToken = "",
  protocol = "connect",
): Promise<Outcome<unknown>> {
  return page.evaluate(
    ([n, token, p]) =>
      (window as unknown as { lifecycle: ApiClientPage }).lifecycle.list(
        n,
        token,
        p,
      ),
    [name, pageToken, protocol] as const,
  );
}

/**
 * The page's Watch of `name`'s open rows until `count` messages came, on
 * Connect or, with `protocol` "grpc-web", gRPC-Web. The page calls
 * `window.onWatchMessage` with each; the test must expose it.
 */
export function watchOnPage(
  page: Page,
  name: string,
  count: number,
  protocol = "connect",
): Promise<Outcome<string[]>> {
  return page.evaluate(
    ([n, c, p]) =>
      (window as unknown as { lifecycle: ApiClientPage }).lifecycle.watch(
        n,
        c,
        p,
      ),
    [name, count, protocol] as const,
  );
}

/** The methods a preflight's answer from the service allows. */
export const ALLOWED_METHODS = "POST, GET";

/**
 * The request headers a preflight's answer from the service allows: what
 * Connect and gRPC-Web send, and Authorization.
 */
export const ALLOWED_HEADERS =
  "Content-Type, Connect-Protocol-Version, Connect-Timeout-Ms, Connect-Content-Encoding, Connect-Accept-Encoding, Content-Encoding, Accept-Encoding, Grpc-Message-Type, X-Grpc-Web, X-User-Agent, Grpc-Timeout, Authorization";

/** A response's status and the headers that CORS is made of. */
export interface CorsAnswer {
  readonly status: number;
  readonly headers: Record<string, string>;
}

/** The CORS headers among `headers`, and Vary, by lower-case name. */
export function corsHeadersOf(
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

/** What Chromium's network stack saw of CORS while a page called a service. */
export interface CorsRecord {
  /** Each preflight's Access-Control-Request-Headers, as Chromium sent it. */
  readonly preflightRequests: string[];
  /** Each preflight's answer from the service. */
  readonly preflights: CorsAnswer[];
  /** Each CORS failure Chromium reported, by its DevTools name. */
  readonly corsErrors: string[];
}

/** Records the preflights `page` sends to `serviceUrl` and its CORS failures. */
export async function recordCors(
  page: Page,
  serviceUrl: string,
): Promise<CorsRecord> {
  const devtools: CDPSession = await page.context().newCDPSession(page);
  await devtools.send("Network.enable");
  const seen: CorsRecord = {
    preflightRequests: [],
    preflights: [],
    corsErrors: [],
  };
  // DevTools types a preflight's request as "Other", its response as
  // "Preflight".
  devtools.on("Network.requestWillBeSent", ({ request }) => {
    if (request.method === "OPTIONS" && request.url.startsWith(serviceUrl)) {
      seen.preflightRequests.push(
        String(
          corsHeadersOf(request.headers)["access-control-request-headers"],
        ),
      );
    }
  });
  devtools.on("Network.responseReceived", ({ type, response }) => {
    if (type === "Preflight" && response.url.startsWith(serviceUrl)) {
      seen.preflights.push({
        status: response.status,
        headers: corsHeadersOf(response.headers),
      });
    }
  });
  devtools.on("Network.loadingFailed", ({ corsErrorStatus }) => {
    if (corsErrorStatus) seen.corsErrors.push(corsErrorStatus.corsError);
  });
  return seen;
}
