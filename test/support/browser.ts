import { once } from "node:events";
import { existsSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { build } from "esbuild";
import { type Browser, chromium } from "playwright-core";

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
