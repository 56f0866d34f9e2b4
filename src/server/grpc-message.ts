import type http from "node:http";
import type http2 from "node:http2";
import type { RequestHandler } from "./listener.js";

type Headers = http.OutgoingHttpHeaders;

/**
 * Sends the `grpc-message` of gRPC answers percent-encoded as the gRPC spec
 * says: only bytes outside printable ASCII, and `%`. connect-node encodes it
 * with `encodeURIComponent`, which escapes `:`, `,`, `;` and more as well,
 * and grpc-js decodes it with `decodeURI`, which leaves those escaped: its
 * callers would read "host%3A" for "host:". Connect and gRPC-Web answers
 * pass through untouched.
 */
export function withSpecGrpcMessage(handler: RequestHandler): RequestHandler {
  return (request, response) => {
    const type = request.headers["content-type"] ?? "";
    if (/^application\/grpc(\+|;|$)/.test(type)) {
      reencodeGrpcMessages(response);
    }
    handler(request, response);
  };
}

function reencodeGrpcMessages(
  response: http.ServerResponse | http2.Http2ServerResponse,
): void {
  const writeHead = response.writeHead.bind(response) as (
    ...args: unknown[]
  ) => unknown;
  const addTrailers = response.addTrailers.bind(response);
  Object.assign(response, {
    writeHead(...args: unknown[]) {
      const last = args.at(-1);
      if (isHeaderObject(last)) args[args.length - 1] = reencoded(last);
      return writeHead(...args);
    },
    addTrailers(headers: Headers) {
      addTrailers(isHeaderObject(headers) ? reencoded(headers) : headers);
    },
  });
}

function isHeaderObject(value: unknown): value is Headers {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function reencoded(headers: Headers): Headers {
  const message = headers["grpc-message"];
  if (typeof message !== "string") return headers;
  let text: string;
  try {
    text = decodeURIComponent(message);
  } catch {
    return headers;
  }
  return { ...headers, "grpc-message": percentEncode(text) };
}

/** gRPC's percent-encoding of a status message. */
function percentEncode(text: string): string {
  let encoded = "";
  for (const byte of Buffer.from(text, "utf8")) {
    encoded +=
      byte >= 0x20 && byte <= 0x7e && byte !== 0x25
        ? String.fromCharCode(byte)
        : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return encoded;
}
