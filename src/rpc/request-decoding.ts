import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import {
  type Compression,
  compressedFlag,
  type EnvelopedMessage,
  encodeEnvelope,
  pipe,
  readAllBytes,
  transformSplitEnvelope,
  type UniversalHandler,
  type UniversalServerRequest,
} from "@connectrpc/connect/protocol";
import * as connectProtocol from "@connectrpc/connect/protocol-connect";
import * as grpcProtocol from "@connectrpc/connect/protocol-grpc";
import * as grpcWebProtocol from "@connectrpc/connect/protocol-grpc-web";
import { compressionBrotli, compressionGzip } from "@connectrpc/connect-node";
import { checkBinary, checkJson } from "./message-decoding.js";

/** The compressions connectNodeAdapter accepts when it is given none. */
const ACCEPTED_COMPRESSIONS: readonly Compression[] = [
  compressionGzip,
  compressionBrotli,
];

/** How one request carries its messages. */
interface Framing {
  readonly binary: boolean;
  /** Unary Connect sends the message as the body; the rest in envelopes. */
  readonly enveloped: boolean;
  /** The envelope flag of a frame that carries no request message. */
  readonly endFlag: number | undefined;
  /** The compression the request names; null for none. */
  readonly compression: Compression | null;
}

/**
 * Wraps `routes` so that every request message is decoded and checked
 * before connect parses it, and a message that cannot be decoded fails the
 * call with INVALID_ARGUMENT naming the message type and, where it can, the
 * field. Connect itself answers such a message with INTERNAL (HTTP 500 on
 * the Connect protocol) and, for unary methods, before any interceptor runs.
 *
 * Checked for every protocol: protobuf that does not parse, strings that are
 * not UTF-8, JSON that is not UTF-8 or holds an unpaired surrogate, envelopes
 * marked compressed that do not decompress, and a unary or server-streaming
 * call with no message or more than one. The checks read with connect's own
 * limit, `receiveMaxBytes` (RECEIVE_MAX_BYTES), so a message over it fails
 * with RESOURCE_EXHAUSTED before connect reads it, in words that name the
 * setting rather than connect's option.
 */
export function checkRequestDecoding(
  routes: (router: ConnectRouter) => void,
  receiveMaxBytes: number,
): (router: ConnectRouter) => void {
  return (router) => {
    routes(router);
    // connectNodeAdapter serves the handlers the router holds once `routes`
    // has returned.
    for (const [index, handler] of router.handlers.entries()) {
      router.handlers[index] = checkedHandler(handler, receiveMaxBytes);
    }
  };
}

function checkedHandler(
  handler: UniversalHandler,
  receiveMaxBytes: number,
): UniversalHandler {
  const { method } = handler;
  const single =
    method.methodKind === "unary" || method.methodKind === "server_streaming";
  const checked = (request: UniversalServerRequest) => {
    const framing = framingOf(request);
    const original = request.body;
    if (!framing || !isByteStream(original)) return handler(request);
    const check = (data: Uint8Array) =>
      framing.binary
        ? checkBinary(method.input, data)
        : checkJson(method.input, data);
    if (framing.enveloped) {
      const body = checkEnvelopes(original, framing, check, receiveMaxBytes, {
        single,
        name: method.name,
      });
      return handler({ ...request, body });
    }
    const { header } = request;
    const body = checkWholeBody(
      original,
      header,
      framing,
      check,
      receiveMaxBytes,
    );
    return handler({
      ...request,
      header: withoutOverLimitLength(header, receiveMaxBytes),
      body,
    });
  };
  return Object.assign(checked, handler);
}

/**
 * `header` without a Content-Length over the limit. connect refuses such a
 * length before it reads the body, in words that name its own option;
 * without it, connect reads the body, whose check refuses the message
 * naming RECEIVE_MAX_BYTES.
 */
function withoutOverLimitLength(
  header: Headers,
  receiveMaxBytes: number,
): Headers {
  const name = connectProtocol.headerUnaryContentLength;
  if (!(Number(header.get(name)) > receiveMaxBytes)) return header;
  const kept = new Headers(header);
  kept.delete(name);
  return kept;
}

function isByteStream(body: unknown): body is AsyncIterable<Uint8Array> {
  return (
    typeof body === "object" && body !== null && Symbol.asyncIterator in body
  );
}

/**
 * The framing of a POST in one of the three protocols; undefined for
 * anything the checks leave to connect: another method or content type, or
 * a compression it does not know (connect refuses the call itself).
 */
function framingOf(request: UniversalServerRequest): Framing | undefined {
  if (request.method !== "POST") return undefined;
  const shape = shapeOf(request.header.get("Content-Type"));
  if (!shape) return undefined;
  const name = request.header.get(shape.encodingHeader);
  if (!name || name === "identity") return { ...shape, compression: null };
  const compression = ACCEPTED_COMPRESSIONS.find(
    (known) => known.name === name,
  );
  return compression && { ...shape, compression };
}

/** How a content type frames messages, and the header naming compression. */
function shapeOf(contentType: string | null) {
  const grpcWeb = grpcWebProtocol.parseContentType(contentType);
  if (grpcWeb) {
    return grpcWeb.text
      ? undefined
      : {
          binary: grpcWeb.binary,
          enveloped: true,
          endFlag: grpcWebProtocol.trailerFlag,
          encodingHeader: grpcWebProtocol.headerEncoding,
        };
  }
  const grpc = grpcProtocol.parseContentType(contentType);
  if (grpc) {
    return {
      binary: grpc.binary,
      enveloped: true,
      endFlag: undefined,
      encodingHeader: grpcProtocol.headerEncoding,
    };
  }
  const connect = connectProtocol.parseContentType(contentType);
  if (connect) {
    return {
      binary: connect.binary,
      enveloped: connect.stream,
      endFlag: connect.stream ? connectProtocol.endStreamFlag : undefined,
      encodingHeader: connect.stream
        ? connectProtocol.headerStreamEncoding
        : connectProtocol.headerUnaryEncoding,
    };
  }
  return undefined;
}

/** The enveloped body, each message checked before its envelope is passed on. */
async function* checkEnvelopes(
  body: AsyncIterable<Uint8Array>,
  framing: Framing,
  check: (data: Uint8Array) => void,
  receiveMaxBytes: number,
  method: { readonly single: boolean; readonly name: string },
): AsyncGenerator<Uint8Array> {
  let messages = 0;
  const envelopes = splitEnvelopes(body, receiveMaxBytes);
  for await (const envelope of envelopes) {
    const data = await decompressed(envelope, framing, receiveMaxBytes);
    const { endFlag } = framing;
    if (endFlag === undefined || (envelope.flags & endFlag) !== endFlag) {
      messages += 1;
      if (method.single && messages > 1) {
        throw invalidRequest(
          `${method.name} takes one request message; the request has more`,
        );
      }
      check(data);
    }
    yield encodeEnvelope(envelope.flags, envelope.data);
  }
  if (method.single && messages === 0) {
    throw invalidRequest(
      `${method.name} takes one request message; the request has none`,
    );
  }
}

/** The envelopes of `body`, each at most `receiveMaxBytes` long. */
async function* splitEnvelopes(
  body: AsyncIterable<Uint8Array>,
  receiveMaxBytes: number,
): AsyncGenerator<EnvelopedMessage> {
  try {
    yield* pipe(body, transformSplitEnvelope(receiveMaxBytes));
  } catch (error) {
    throw overReceiveLimit(error, receiveMaxBytes);
  }
}

/** A unary Connect body, checked whole before it is passed on. */
async function* checkWholeBody(
  body: AsyncIterable<Uint8Array>,
  header: Headers,
  framing: Framing,
  check: (data: Uint8Array) => void,
  receiveMaxBytes: number,
): AsyncGenerator<Uint8Array> {
  const bytes = await readAllBytes(
    body,
    receiveMaxBytes,
    header.get(connectProtocol.headerUnaryContentLength),
  ).catch((error: unknown) => {
    throw overReceiveLimit(error, receiveMaxBytes);
  });
  check(
    framing.compression
      ? await decompress(framing.compression, bytes, receiveMaxBytes)
      : bytes,
  );
  yield bytes;
}

async function decompressed(
  envelope: EnvelopedMessage,
  framing: Framing,
  receiveMaxBytes: number,
): Promise<Uint8Array> {
  if ((envelope.flags & compressedFlag) !== compressedFlag) {
    return envelope.data;
  }
  if (!framing.compression) {
    throw invalidRequest(
      "a request message is marked compressed, but the request names no compression",
    );
  }
  return decompress(framing.compression, envelope.data, receiveMaxBytes);
}

async function decompress(
  compression: Compression,
  data: Uint8Array,
  receiveMaxBytes: number,
): Promise<Uint8Array> {
  try {
    return await compression.decompress(data, receiveMaxBytes);
  } catch (error) {
    const overLimit = overReceiveLimit(error, receiveMaxBytes, true);
    if (overLimit !== error) throw overLimit;
    throw invalidRequest(
      `a request message is not valid ${compression.name} data`,
    );
  }
}

/**
 * `error`, when it is connect's refusal of a message over the limit, which
 * names connect's option (readMaxBytes), as the caller should read it:
 * naming RECEIVE_MAX_BYTES, the setting the limit comes from. Anything else
 * is returned as it is.
 */
function overReceiveLimit(
  error: unknown,
  receiveMaxBytes: number,
  afterDecompression = false,
): unknown {
  if (
    !(error instanceof ConnectError) ||
    error.code !== Code.ResourceExhausted
  ) {
    return error;
  }
  // connect states the size when it knows it beforehand, from an envelope's
  // header or the Content-Length; otherwise it stopped reading at the limit.
  const size = /^message size (\d+) /.exec(error.rawMessage)?.[1];
  const found =
    size === undefined ? `over ${receiveMaxBytes} bytes` : `${size} bytes`;
  return new ConnectError(
    `the request message is ${found}${afterDecompression ? " once decompressed" : ""}; RECEIVE_MAX_BYTES allows at most ${receiveMaxBytes}`,
    Code.ResourceExhausted,
    undefined,
    undefined,
    error,
  );
}

function invalidRequest(message: string): ConnectError {
  return new ConnectError(message, Code.InvalidArgument);
}
