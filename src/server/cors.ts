import { cors } from "@connectrpc/connect";
import type { RequestHandler } from "./listener.js";

/**
 * What the Connect and gRPC-Web protocols send and read, as connect-es
 * lists them, and the bearer token.
 */
const ALLOWED_METHODS = cors.allowedMethods.join(", ");
const ALLOWED_HEADERS = [...cors.allowedHeaders, "Authorization"].join(", ");
const EXPOSED_HEADERS = cors.exposedHeaders.join(", ");
/** How long a browser may reuse a preflight's answer; Chromium's limit. */
const PREFLIGHT_MAX_AGE_SECONDS = 7200;

/**
 * Lets browser pages from `allowedOrigins` call the service: answers their
 * preflight requests and grants their calls the right to read the response
 * and its headers. A page from any other origin gets no grant, so its
 * browser blocks the call. With no origins, requests pass through as they
 * are.
 */
export function withCors(
  handler: RequestHandler,
  allowedOrigins: readonly string[],
): RequestHandler {
  if (allowedOrigins.length === 0) return handler;
  const allowed = new Set(allowedOrigins);
  return (request, response) => {
    const { origin } = request.headers;
    const granted = origin !== undefined && allowed.has(origin);
    // The answer depends on the origin, so caches must not share it.
    response.setHeader("Vary", "Origin");
    const isPreflight =
      request.method === "OPTIONS" &&
      request.headers["access-control-request-method"] !== undefined;
    if (isPreflight) {
      if (!granted) {
        response.writeHead(403);
        response.end();
        return;
      }
      response.writeHead(204, {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": ALLOWED_METHODS,
        "Access-Control-Allow-Headers": ALLOWED_HEADERS,
        "Access-Control-Max-Age": String(PREFLIGHT_MAX_AGE_SECONDS),
      });
      response.end();
      return;
    }
    if (granted) {
      response.setHeader("Access-Control-Allow-Origin", origin);
      response.setHeader("Access-Control-Expose-Headers", EXPOSED_HEADERS);
    }
    handler(request, response);
  };
}
