import { existsSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { build } from "esbuild";
import { type Browser, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, expect, test } from "vitest";
import { Status } from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import {
  createTestDatabase,
  deckyName,
  startTestServer,
  type TestDatabase,
  type TestServer,
} from "../support/test-server.js";

const CHROMIUM = "/usr/bin/chromium";

let database: TestDatabase;
let server: TestServer;
let gateway: http.Server;
let browser: Browser;
let page: Page;

/**
 * Serves a page and its script, and passes every other request to the
 * service: the page and the API share one origin, as behind a reverse proxy.
 */
async function startGateway(serviceUrl: string): Promise<http.Server> {
  const bundle = await build({
    entryPoints: [new URL("./page/client.ts", import.meta.url).pathname],
    bundle: true,
    format: "esm",
    platform: "browser",
    write: false,
  });
  const script = bundle.outputFiles[0]!.text;
  const service = new URL(serviceUrl);
  const gateway = http.createServer((request, response) => {
    if (request.url === "/") {
      response.writeHead(200, { "content-type": "text/html" });
      response.end(
        '<!doctype html><script type="module" src="/client.js"></script>',
      );
      return;
    }
    if (request.url === "/client.js") {
      response.writeHead(200, { "content-type": "text/javascript" });
      response.end(script);
      return;
    }
    const upstream = http.request(
      {
        host: service.hostname,
        port: service.port,
        path: request.url,
        method: request.method,
        headers: request.headers,
      },
      (answer) => {
        response.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(response);
      },
    );
    request.pipe(upstream);
  });
  gateway.listen(0, "127.0.0.1");
  await new Promise((resolve) => gateway.once("listening", resolve));
  return gateway;
}

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `${CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)`,
    );
  }
  database = await createTestDatabase();
  server = await startTestServer(database);
  gateway = await startGateway(server.url);
  browser = await chromium.launch({
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
  page = await browser.newPage();
  const { port } = gateway.address() as AddressInfo;
  await page.goto(`http://127.0.0.1:${port}/`);
  await page.waitForFunction(() => "lifecycle" in window);
});

afterAll(async () => {
  await browser?.close();
  if (gateway) {
    gateway.closeAllConnections();
    await new Promise((resolve) => gateway.close(resolve));
  }
  await server?.close();
  await database?.drop();
});

test("a browser on Connect-Web accepts a deploy, lists it and watches it to SUCCEEDED", async () => {
  const name = deckyName("web");
  const id = await page.evaluate(
    (deckyName) =>
      (
        window as unknown as {
          lifecycle: { accept(name: string): Promise<string> };
        }
      ).lifecycle.accept(deckyName),
    name,
  );

  expect(
    await page.evaluate(
      (deckyName) =>
        (
          window as unknown as {
            lifecycle: { list(name: string): Promise<unknown[]> };
          }
        ).lifecycle.list(deckyName),
      name,
    ),
  ).toEqual([{ id, deckyName: name, status: "PENDING" }]);

  // The worker side moves the row each time the browser has seen a message,
  // so every change reaches the page live, over one open stream.
  const moves = [Status.RUNNING, Status.SUCCEEDED];
  await page.exposeFunction("onWatchMessage", async (entry: string) => {
    if (entry === "SNAPSHOT_END -" || entry.startsWith("CHANGE RUNNING")) {
      const status = moves.shift();
      if (status) await server.grpc.report({ lifecycleId: id, status });
    }
  });
  const seen = await page.evaluate(
    (lifecycleId) =>
      (
        window as unknown as {
          lifecycle: { watch(id: string): Promise<string[]> };
        }
      ).lifecycle.watch(lifecycleId),
    id,
  );

  expect(seen).toEqual([
    "SNAPSHOT PENDING",
    "SNAPSHOT_END -",
    "CHANGE RUNNING",
    "CHANGE SUCCEEDED",
  ]);
});
