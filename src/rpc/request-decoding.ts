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
 * call with no message or more than one. Size limits stay connect's: the
 * checks read with the same `readMaxBytes`, so a message over it fails with
 * RESOURCE_EXHAUSTED exactly as it would without them.
 */
export function checkRequestDecoding(
  routes: (router: ConnectRouter) => void,
  readMaxBytes: number,
): (router: ConnectRouter) => void {
  return (router) => {
    routes(router);
    // connectNodeAdapter serves the handlers the router holds once `routes`
    // has returned.
    for (const [index, handler] of router.handlers.entries()) {
      router.handlers[index] = checkedHandler(handler, readMaxBytes);
    }
  };
}

function checkedHandler(
  handler: UniversalHandler,
  readMaxBytes: number,
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
    const body = framing.enveloped
      ? checkEnvelopes(original, framing, check, readMaxBytes, {
          single,
          name: method.name,
        })
      : checkWholeBody(original, request.header, framing, check, readMaxBytes);
    return handler({ ...request, body });
  };
  return Object.assign(checked, handler);
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
  readMaxBytes: number,
  method: { readonly single: boolean; readonly name: string },
): AsyncGenerator<Uint8Array> {
  let messages = 0;
  const envelopes: AsyncIterable<EnvelopedMessage> = pipe(
    body,
    transformSplitEnvelope(readMaxBytes),
  );
  for await (const envelope of envelopes) {
    const data = await decompressed(envelope, framing, readMaxBytes);
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

/** A unary Connect body, checked whole before it is passed on. */
async function* checkWholeBody(
  body: AsyncIterable<Uint8Array>,
  header: Headers,
  framing: Framing,
  check: (data: Uint8Array) => void,
  readMaxBytes: number,
): AsyncGenerator<Uint8Array> {
  const bytes = await readAllBytes(
    body,
    readMaxBytes,
    header.get(connectProtocol.headerUnaryContentLength),
  );
  check(
    framing.compression
      ? await decompress(framing.compression, bytes, readMaxBytes)
      : bytes,
  );
  yield bytes;
}

async function decompressed(
  envelope: EnvelopedMessage,
  framing: Framing,
  readMaxBytes: number,
): Promise<Uint8Array> {
  if ((envelope.flags & compressedFlag) !== compressedFlag) {
    return envelope.data;
  }
  if (!framing.compression) {
    throw invalidRequest(
      "a request message is marked compressed, but the request names no compression",
    );
  }
  return decompress(framing.compression, envelope.data, readMaxBytes);
}

async function decompress(
  compression: Compression,
  data: Uint8Array,
  readMaxBytes: number,
): Promise<Uint8Array> {
  try {
    return await compression.decompress(data, readMaxBytes);
  } catch (error) {
    // Over the size limit after decompression: connect's own error.
    if (ConnectError.from(error).code === Code.ResourceExhausted) throw error;
    throw invalidRequest(
      `a request message is not valid ${compression.name} data`,
    );
  }
}

function invalidRequest(message: string): ConnectError {
  return new ConnectError(message, Code.InvalidArgument);
}
