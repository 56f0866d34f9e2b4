import { gzipSync } from "node:zlib";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { afterAll, expect, test } from "vitest";
import {
  AcceptRequestSchema,
  ListRequestSchema,
  Operation,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { closeRawSessions, envelope, rawCall } from "../support/raw-rpc.js";
import { deckyName, serveThisFile } from "../support/test-server.js";

const LIMIT = 64 * 1024;
const server = serveThisFile({ RECEIVE_MAX_BYTES: String(LIMIT) });
afterAll(closeRawSessions);

test.each([
  ["grpc", true],
  ["grpc-web", true],
  ["connect-proto", false],
] as const)(
  "with RECEIVE_MAX_BYTES set, a message one byte over it is RESOURCE_EXHAUSTED over %s and writes nothing",
  async (protocol, enveloped) => {
    const name = deckyName();
    const init = {
      operation: Operation.DEPLOY,
      targets: [{ deckyName: name }],
      requestId: "",
    };
    const empty = toBinary(
      AcceptRequestSchema,
      create(AcceptRequestSchema, init),
    );
    // The request_id's tag and its length take four bytes at this size.
    init.requestId = "x".repeat(LIMIT + 1 - empty.length - 4);
    const message = toBinary(
      AcceptRequestSchema,
      create(AcceptRequestSchema, init),
    );
    expect(message.length).toBe(LIMIT + 1);

    const answer = await rawCall(
      server.url,
      protocol,
      "Accept",
      enveloped ? envelope(message) : message,
    );
    const listed = await server.grpc.list({ deckyName: name });

    expect({ code: answer.code, message: answer.message }).toEqual({
      code: Code.ResourceExhausted,
      message: `the request message is ${LIMIT + 1} bytes; RECEIVE_MAX_BYTES allows at most ${LIMIT}`,
    });
    expect(listed.rows).toEqual([]);
  },
);

test("with RECEIVE_MAX_BYTES set, a message of exactly that size is read and validated", async () => {
  // A 1-byte tag and a 3-byte length before the token.
  const message = toBinary(
    ListRequestSchema,
    create(ListRequestSchema, { pageToken: "t".repeat(LIMIT - 4) }),
  );
  expect(message.length).toBe(LIMIT);

  const answer = await rawCall(server.url, "grpc", "List", envelope(message));

  expect({ code: answer.code, message: answer.message }).toEqual({
    code: Code.InvalidArgument,
    message: "page_token is not a token this service issued",
  });
});

test("with RECEIVE_MAX_BYTES set, a Connect body of unstated length is refused once more than that has arrived", async () => {
  const name = deckyName();
  const message = toBinary(
    AcceptRequestSchema,
    create(AcceptRequestSchema, {
      operation: Operation.DEPLOY,
      targets: [{ deckyName: name }],
      requestId: "x".repeat(2 * LIMIT),
    }),
  );

  // Chunked, with no Content-Length: the size is known only as it arrives.
  const answer = await rawCall(server.url, "connect-proto", "Accept", message, {
    headers: { "transfer-encoding": "chunked" },
  });
  const listed = await server.grpc.list({ deckyName: name });

  expect({ code: answer.code, message: answer.message }).toEqual({
    code: Code.ResourceExhausted,
    message: `the request message is over ${LIMIT} bytes; RECEIVE_MAX_BYTES allows at most ${LIMIT}`,
  });
  expect(listed.rows).toEqual([]);
});

test.each([
  ["grpc", true, { "grpc-encoding": "gzip" }],
  ["connect-proto", false, { "content-encoding": "gzip" }],
] as const)(
  "with RECEIVE_MAX_BYTES set, a gzip message that inflates past it is RESOURCE_EXHAUSTED over %s, saying so",
  async (protocol, enveloped, headers) => {
    const message = toBinary(
      ListRequestSchema,
      create(ListRequestSchema, { pageToken: "t".repeat(2 * LIMIT) }),
    );
    const compressed = gzipSync(message);
    expect(compressed.length).toBeLessThan(LIMIT);

    const answer = await rawCall(
      server.url,
      protocol,
      "List",
      enveloped ? envelope(compressed, 1) : compressed,
      { headers },
    );

    expect({ code: answer.code, message: answer.message }).toEqual({
      code: Code.ResourceExhausted,
      message: `the request message is over ${LIMIT} bytes once decompressed; RECEIVE_MAX_BYTES allows at most ${LIMIT}`,
    });
  },
);
