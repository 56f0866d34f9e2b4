import http from "node:http";
import http2 from "node:http2";
import { Code } from "@connectrpc/connect";
import { codeFromString } from "@connectrpc/connect/protocol-connect";

/**
 * The wire protocols a raw call can speak. Unary Connect sends the message
 * as the body; the others frame it in 5-byte envelopes.
 */
export type Protocol =
  | "grpc"
  | "grpc-web"
  | "connect-proto"
  | "connect-json"
  | "connect-stream-proto"
  | "connect-stream-json";

export const PROTOCOLS: readonly Protocol[] = [
  "grpc",
  "grpc-web",
  "connect-proto",
  "connect-json",
  "connect-stream-proto",
  "connect-stream-json",
];

const CONTENT_TYPES: Record<Protocol, string> = {
  grpc: "application/grpc",
  "grpc-web": "application/grpc-web+proto",
  "connect-proto": "application/proto",
  "connect-json": "application/json",
  "connect-stream-proto": "application/connect+proto",
  "connect-stream-json": "application/connect+json",
};

/** Whether the protocol frames messages in envelopes. */
export function isEnveloped(protocol: Protocol): boolean {
  return protocol !== "connect-proto" && protocol !== "connect-json";
}

/** Whether the protocol carries JSON rather than binary protobuf. */
export function isJson(protocol: Protocol): boolean {
  return protocol.endsWith("json");
}

/** One 5-byte envelope: flags, big-endian length, then the data. */
export function envelope(data: Uint8Array, flags = 0, length?: number) {
  const header = Buffer.alloc(5);
  header.writeUInt8(flags, 0);
  header.writeUInt32BE(length ?? data.byteLength, 1);
  return Buffer.concat([header, data]);
}

/** The status code of a call that succeeded; connect's Code has no name for it. */
export const OK = 0;
export type StatusCode = Code | typeof OK;

/** What the server answered, in whatever way the protocol says it. */
export interface RawAnswer {
  readonly httpStatus: number;
  /** The RPC's code (OK is 0); undefined when the answer is not an RPC one. */
  readonly code: StatusCode | undefined;
  readonly message: string;
  /** Everything the server sent that a person could read: body, headers, trailers. */
  readonly text: string;
  /** The response was a stream that sent a message; the test stopped reading it. */
  readonly streamed: boolean;
}

export interface RawCallOptions {
  readonly headers?: Record<string, string>;
  /** The service of `method`; LifecycleService unless told. */
  readonly service?: string;
  /** Fails the call (rejects) when no answer arrives within this time. */
  readonly timeoutMs?: number;
}

/** Sends `body` as it is to `method` of a service and reads the answer. */
export function rawCall(
  baseUrl: string,
  protocol: Protocol,
  method: string,
  body: Uint8Array,
  options: RawCallOptions = {},
): Promise<RawAnswer> {
  const path = `/decky.lifecycle.v1.${options.service ?? "LifecycleService"}/${method}`;
  const headers = {
    "content-type": CONTENT_TYPES[protocol],
    ...options.headers,
  };
  const timeoutMs = options.timeoutMs ?? 10_000;
  return protocol === "grpc"
    ? http2Call(baseUrl, path, headers, body, timeoutMs)
    : http1Call(baseUrl, protocol, path, headers, body, timeoutMs);
}

function timeoutError(path: string, timeoutMs: number): Error {
  return new Error(`no answer from ${path} within ${timeoutMs} ms`);
}

const sessions = new Map<string, http2.ClientHttp2Session>();

function http2Session(baseUrl: string): http2.ClientHttp2Session {
  let session = sessions.get(baseUrl);
  if (!session || session.closed || session.destroyed) {
    session = http2.connect(baseUrl);
    session.on("error", () => {});
    session.unref();
    sessions.set(baseUrl, session);
  }
  return session;
}

/** Closes the HTTP/2 sessions the raw gRPC calls opened. */
export function closeRawSessions(): void {
  for (const session of sessions.values()) session.destroy();
  sessions.clear();
}

function http2Call(
  baseUrl: string,
  path: string,
  headers: Record<string, string>,
  body: Uint8Array,
  timeoutMs: number,
): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const stream = http2Session(baseUrl).request({
      ":method": "POST",
      ":path": path,
      te: "trailers",
      ...headers,
    });
    let responseHeaders: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    let done = false;
    const timer = setTimeout(() => {
      done = true;
      stream.close(http2.constants.NGHTTP2_CANCEL);
      reject(timeoutError(path, timeoutMs));
    }, timeoutMs);
    const finish = (streamed: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      const data = Buffer.concat(chunks);
      const status =
        trailers["grpc-status"] ?? responseHeaders["grpc-status"] ?? undefined;
      const message = String(
        trailers["grpc-message"] ?? responseHeaders["grpc-message"] ?? "",
      );
      resolve({
        httpStatus: Number(responseHeaders[":status"]),
        code: streamed
          ? OK
          : status === undefined
            ? undefined
            : (Number(status) as Code),
        message: safeDecode(message),
        text: [
          JSON.stringify(responseHeaders),
          JSON.stringify(trailers),
          safeDecode(message),
          data.toString("latin1"),
        ].join("\n"),
        streamed,
      });
    };
    stream.on("response", (received) => {
      responseHeaders = received;
    });
    stream.on("trailers", (received) => {
      trailers = received;
    });
    stream.on("data", (chunk: Buffer) => {
      chunks.push(chunk);
      if (hasDataEnvelope(Buffer.concat(chunks), 0x80)) {
        stream.close(http2.constants.NGHTTP2_CANCEL);
        finish(true);
      }
    });
    stream.on("error", () => {});
    // The answer is complete with the trailers, even while the server has
    // not read the whole request (it answers an oversized message at once).
    stream.on("end", () => {
      finish(false);
      stream.close(http2.constants.NGHTTP2_CANCEL);
    });
    stream.on("close", () => finish(false));
    stream.end(body);
  });
}

function http1Call(
  baseUrl: string,
  protocol: Protocol,
  path: string,
  headers: Record<string, string>,
  body: Uint8Array,
  timeoutMs: number,
): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const request = http.request(
      `${baseUrl}${path}`,
      { method: "POST", headers, agent: false },
      (response) => {
        const chunks: Buffer[] = [];
        let done = false;
        const finish = (streamed: boolean) => {
          if (done) return;
          done = true;
          clearTimeout(timer);
          resolve(
            decodeHttp1Answer(
              protocol,
              response,
              Buffer.concat(chunks),
              streamed,
            ),
          );
        };
        response.on("data", (chunk: Buffer) => {
          chunks.push(chunk);
          const endFlag = protocol === "grpc-web" ? 0x80 : 0x02;
          if (
            isEnveloped(protocol) &&
            response.statusCode === 200 &&
            hasDataEnvelope(Buffer.concat(chunks), endFlag)
          ) {
            request.destroy();
            finish(true);
          }
        });
        response.on("end", () => finish(false));
        response.on("error", () => finish(false));
      },
    );
    const timer = setTimeout(() => {
      request.destroy();
      reject(timeoutError(path, timeoutMs));
    }, timeoutMs);
    request.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    request.end(body);
  });
}

/** Whether `bytes` begin with whole envelopes, one of them a message. */
function hasDataEnvelope(bytes: Buffer, endFlag: number): boolean {
  let offset = 0;
  while (offset + 5 <= bytes.length) {
    const flags = bytes.readUInt8(offset);
    const length = bytes.readUInt32BE(offset + 1);
    if (offset + 5 + length > bytes.length) return false;
    if ((flags & endFlag) !== endFlag) return true;
    offset += 5 + length;
  }
  return false;
}

function decodeHttp1Answer(
  protocol: Protocol,
  response: http.IncomingMessage,
  body: Buffer,
  streamed: boolean,
): RawAnswer {
  const httpStatus = response.statusCode ?? 0;
  const text = [JSON.stringify(response.headers), body.toString("latin1")].join(
    "\n",
  );
  const answer = (
    code: StatusCode | undefined,
    message: string,
  ): RawAnswer => ({
    httpStatus,
    code: streamed ? OK : code,
    message,
    text,
    streamed,
  });
  if (streamed) return answer(OK, "");
  if (protocol === "grpc-web") {
    const headerStatus = response.headers["grpc-status"];
    if (headerStatus !== undefined) {
      return answer(
        Number(headerStatus) as Code,
        safeDecode(String(response.headers["grpc-message"] ?? "")),
      );
    }
    const trailer = lastEnvelope(body, 0x80);
    if (!trailer) return answer(undefined, "");
    const fields = new Map(
      trailer
        .toString("utf8")
        .split("\r\n")
        .filter((line) => line.includes(":"))
        .map((line) => {
          const at = line.indexOf(":");
          return [
            line.slice(0, at).trim().toLowerCase(),
            line.slice(at + 1).trim(),
          ];
        }),
    );
    const status = fields.get("grpc-status");
    return answer(
      status === undefined ? undefined : (Number(status) as Code),
      safeDecode(fields.get("grpc-message") ?? ""),
    );
  }
  if (isEnveloped(protocol)) {
    if (httpStatus !== 200) return connectErrorBody(answer, body);
    const end = lastEnvelope(body, 0x02);
    if (!end) return answer(undefined, "");
    const json = parseJson(end.toString("utf8")) as {
      error?: { code?: string; message?: string };
    } | null;
    if (!json) return answer(undefined, "");
    if (!json.error) return answer(OK, "");
    return answer(
      codeFromString(json.error.code ?? "") ?? Code.Unknown,
      json.error.message ?? "",
    );
  }
  if (httpStatus === 200) return answer(OK, "");
  return connectErrorBody(answer, body);
}

function connectErrorBody(
  answer: (code: StatusCode | undefined, message: string) => RawAnswer,
  body: Buffer,
): RawAnswer {
  const json = parseJson(body.toString("utf8")) as {
    code?: string;
    message?: string;
  } | null;
  if (!json || typeof json.code !== "string") return answer(undefined, "");
  return answer(codeFromString(json.code) ?? Code.Unknown, json.message ?? "");
}

/** The data of the last envelope of `body` whose flags include `flag`. */
function lastEnvelope(body: Buffer, flag: number): Buffer | undefined {
  let offset = 0;
  let found: Buffer | undefined;
  while (offset + 5 <= body.length) {
    const flags = body.readUInt8(offset);
    const length = body.readUInt32BE(offset + 1);
    const data = body.subarray(offset + 5, offset + 5 + length);
    if ((flags & flag) === flag) found = data;
    offset += 5 + length;
  }
  return found;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function safeDecode(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}
