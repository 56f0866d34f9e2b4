import { randomUUID } from "node:crypto";
import { gzipSync } from "node:zlib";
import {
  create,
  type DescMessage,
  type MessageInitShape,
  toBinary,
} from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createClient,
  type Transport,
} from "@connectrpc/connect";
import { compressionGzip, createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, expect, test } from "vitest";
import {
  AcceptRequestSchema,
  DeltaOutcome_Result,
  HeartbeatRequestSchema,
  LifecycleService,
  ListRequestSchema,
  Operation,
  ReportRequestSchema,
  Status,
  WatchRequestSchema,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import {
  closeRawSessions,
  envelope,
  type Protocol,
  type RawAnswer,
  rawCall,
} from "../support/raw-rpc.js";
import { deckyName, serveThisFile } from "../support/test-server.js";

const server = serveThisFile();
afterAll(closeRawSessions);

const MIB = 1024 * 1024;
const DECKY_PATTERN = "^[a-z0-9-]{1,64}$";

/** The error a call failed with; fails the test if the call succeeded. */
async function failure(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (error) {
    return ConnectError.from(error);
  }
  throw new Error("the call succeeded but was expected to fail");
}

function encode<Desc extends DescMessage>(
  schema: Desc,
  init: MessageInitShape<Desc>,
): Buffer {
  return Buffer.from(toBinary(schema, create(schema, init)));
}

type Method = "Accept" | "List" | "Watch" | "Heartbeat" | "Report";
const STREAMING: ReadonlySet<Method> = new Set(["Watch", "Heartbeat"]);

/** A binary protocol as it carries `method`: framed in envelopes or not. */
type BinaryProtocol = "grpc" | "grpc-web" | "connect";
function wireProtocol(protocol: BinaryProtocol, method: Method): Protocol {
  if (protocol !== "connect") return protocol;
  return STREAMING.has(method) ? "connect-stream-proto" : "connect-proto";
}

/** Sends one message as `protocol` frames it for `method`. */
function sendRaw(
  protocol: BinaryProtocol,
  method: Method,
  message: Uint8Array,
): Promise<RawAnswer> {
  const wire = wireProtocol(protocol, method);
  const body = wire === "connect-proto" ? message : envelope(message);
  return rawCall(server.url, wire, method, body);
}

/** An RPC's answer, without what only some protocols send. */
function outcome(answer: RawAnswer) {
  return { code: answer.code, message: answer.message };
}

/** A new PENDING row of a worker host, for the calls that move rows. */
async function pendingRow() {
  const host = randomUUID();
  const name = deckyName();
  const { rows } = await server.grpc.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: name, hostUuid: host }],
  });
  return { host, name, row: rows[0]! };
}

async function statusOf(id: string): Promise<Status | undefined> {
  const { rows } = await server.grpc.list({ ids: [id] });
  return rows[0]?.status;
}

async function rowsNamed(name: string) {
  return (await server.grpc.list({ deckyName: name })).rows;
}

/**
 * One valid message for each RPC, and a check that a call which failed
 * changed nothing it could have changed.
 */
async function scenario(method: Method) {
  const { host, name, row } = await pendingRow();
  const fresh = deckyName();
  switch (method) {
    case "Accept":
      return {
        message: encode(AcceptRequestSchema, {
          operation: Operation.DEPLOY,
          targets: [{ deckyName: fresh }],
        }),
        unchanged: async () => expect(await rowsNamed(fresh)).toEqual([]),
      };
    case "List":
      return {
        message: encode(ListRequestSchema, { deckyName: name }),
        unchanged: async () => {},
      };
    case "Watch":
      return {
        message: encode(WatchRequestSchema, { deckyName: name }),
        unchanged: async () => {},
      };
    case "Heartbeat":
      return {
        message: encode(HeartbeatRequestSchema, {
          hostUuid: host,
          agentVersion: "1.4.2",
          deltas: [
            {
              deckyName: name,
              operation: Operation.DEPLOY,
              status: Status.RUNNING,
            },
          ],
        }),
        unchanged: async () =>
          expect(await statusOf(row.id)).toBe(Status.PENDING),
      };
    case "Report":
      return {
        message: encode(ReportRequestSchema, {
          lifecycleId: row.id,
          status: Status.RUNNING,
        }),
        unchanged: async () =>
          expect(await statusOf(row.id)).toBe(Status.PENDING),
      };
  }
}

const METHODS: readonly Method[] = [
  "Accept",
  "List",
  "Watch",
  "Heartbeat",
  "Report",
];
const BINARY_PROTOCOLS: readonly BinaryProtocol[] = [
  "grpc",
  "grpc-web",
  "connect",
];

test.each(
  METHODS.flatMap((method) =>
    BINARY_PROTOCOLS.map((protocol) => ({ method, protocol })),
  ),
)(
  "a $method message cut short over $protocol is INVALID_ARGUMENT and changes nothing",
  async ({ method, protocol }) => {
    const { message, unchanged } = await scenario(method);

    const answer = await sendRaw(protocol, method, message.subarray(0, -1));

    expect(outcome(answer)).toEqual({
      code: Code.InvalidArgument,
      message: `cannot decode message decky.lifecycle.v1.${method}Request from binary: premature EOF`,
    });
    await unchanged();
  },
);

test("the Connect protocol answers an undecodable message with HTTP 400, not 500", async () => {
  const answer = await rawCall(
    server.url,
    "connect-proto",
    "Accept",
    Buffer.from([0x0a, 0x05, 0x01]),
  );

  expect(answer.httpStatus).toBe(400);
  expect(outcome(answer)).toEqual({
    code: Code.InvalidArgument,
    message:
      "cannot decode message decky.lifecycle.v1.AcceptRequest from binary: illegal tag: field no 0 wire type 1",
  });
});

test("Heartbeat keeps a message applied before an undecodable one, and applies nothing after it", async () => {
  const { host, name, row } = await pendingRow();
  const running = encode(HeartbeatRequestSchema, {
    hostUuid: host,
    deltas: [
      { deckyName: name, operation: Operation.DEPLOY, status: Status.RUNNING },
    ],
  });
  const succeeded = encode(HeartbeatRequestSchema, {
    hostUuid: host,
    deltas: [
      {
        deckyName: name,
        operation: Operation.DEPLOY,
        status: Status.SUCCEEDED,
      },
    ],
  });

  const answer = await rawCall(
    server.url,
    "grpc",
    "Heartbeat",
    Buffer.concat([
      envelope(running),
      envelope(Buffer.from([0xff])),
      envelope(succeeded),
    ]),
  );

  expect(outcome(answer)).toEqual({
    code: Code.InvalidArgument,
    message:
      "cannot decode message decky.lifecycle.v1.HeartbeatRequest from binary: premature EOF",
  });
  expect(await statusOf(row.id)).toBe(Status.RUNNING);
});

/** Stands in a string field for bytes that are not UTF-8. */
const MARK = "\x7f\x7f\x7f\x7f";
const NOT_UTF8 = Buffer.from([0xc3, 0x28, 0xff, 0xfe]);

function withBadUtf8(message: Buffer): Buffer {
  const at = message.indexOf(MARK, 0, "latin1");
  if (at < 0 || message.indexOf(MARK, at + 1, "latin1") >= 0) {
    throw new Error("the message must hold the mark exactly once");
  }
  const copy = Buffer.from(message);
  NOT_UTF8.copy(copy, at);
  return copy;
}

const HOST = "6f1c2a7e-4b1d-4c3e-9a51-2f0d8e7b9c10";
const delta = {
  deckyName: "ssh-01",
  operation: Operation.DEPLOY,
  status: Status.FAILED,
};
const STRING_FIELDS: readonly {
  method: Method;
  field: string;
  message: Buffer;
}[] = [
  {
    method: "Accept",
    field: "request_id",
    message: encode(AcceptRequestSchema, {
      operation: Operation.DEPLOY,
      targets: [{ deckyName: "ssh-01" }],
      requestId: MARK,
    }),
  },
  {
    method: "Accept",
    field: "targets[1].decky_name",
    message: encode(AcceptRequestSchema, {
      operation: Operation.DEPLOY,
      targets: [{ deckyName: "ssh-01" }, { deckyName: MARK }],
    }),
  },
  {
    method: "Accept",
    field: "targets[0].host_uuid",
    message: encode(AcceptRequestSchema, {
      operation: Operation.DEPLOY,
      targets: [{ deckyName: "ssh-01", hostUuid: MARK }],
    }),
  },
  {
    method: "List",
    field: "ids[1]",
    message: encode(ListRequestSchema, { ids: [HOST, MARK] }),
  },
  {
    method: "List",
    field: "decky_name",
    message: encode(ListRequestSchema, { deckyName: MARK }),
  },
  {
    method: "List",
    field: "host_uuid",
    message: encode(ListRequestSchema, { hostUuid: MARK }),
  },
  {
    method: "List",
    field: "page_token",
    message: encode(ListRequestSchema, { pageToken: MARK }),
  },
  {
    method: "Watch",
    field: "ids[0]",
    message: encode(WatchRequestSchema, { ids: [MARK] }),
  },
  {
    method: "Watch",
    field: "host_uuid",
    message: encode(WatchRequestSchema, { hostUuid: MARK }),
  },
  {
    method: "Watch",
    field: "decky_name",
    message: encode(WatchRequestSchema, { deckyName: MARK }),
  },
  {
    method: "Heartbeat",
    field: "host_uuid",
    message: encode(HeartbeatRequestSchema, { hostUuid: MARK }),
  },
  {
    method: "Heartbeat",
    field: "agent_version",
    message: encode(HeartbeatRequestSchema, {
      hostUuid: HOST,
      agentVersion: MARK,
    }),
  },
  {
    method: "Heartbeat",
    field: "deltas[0].decky_name",
    message: encode(HeartbeatRequestSchema, {
      hostUuid: HOST,
      deltas: [{ ...delta, deckyName: MARK }],
    }),
  },
  {
    method: "Heartbeat",
    field: "deltas[1].error",
    message: encode(HeartbeatRequestSchema, {
      hostUuid: HOST,
      deltas: [delta, { ...delta, error: MARK }],
    }),
  },
  {
    method: "Heartbeat",
    field: "deltas[0].lifecycle_id",
    message: encode(HeartbeatRequestSchema, {
      hostUuid: HOST,
      deltas: [{ ...delta, lifecycleId: MARK }],
    }),
  },
  {
    method: "Report",
    field: "lifecycle_id",
    message: encode(ReportRequestSchema, {
      lifecycleId: MARK,
      status: Status.FAILED,
    }),
  },
  {
    method: "Report",
    field: "error",
    message: encode(ReportRequestSchema, {
      lifecycleId: HOST,
      status: Status.FAILED,
      error: MARK,
    }),
  },
];

test.each(
  STRING_FIELDS.flatMap((field) =>
    (["grpc", "connect"] as const).map((protocol) => ({ ...field, protocol })),
  ),
)(
  "$method refuses $field that is not UTF-8 over $protocol, naming the field",
  async ({ method, field, message, protocol }) => {
    const answer = await sendRaw(protocol, method, withBadUtf8(message));

    expect(outcome(answer)).toEqual({
      code: Code.InvalidArgument,
      message: `cannot decode message decky.lifecycle.v1.${method}Request from binary: ${field} is not valid UTF-8`,
    });
  },
);

test.each(["grpc", "grpc-web", "connect"] as const)(
  "a message over the 4 MiB receive limit is RESOURCE_EXHAUSTED over %s and writes nothing",
  async (protocol) => {
    const name = deckyName();
    const message = encode(AcceptRequestSchema, {
      operation: Operation.DEPLOY,
      targets: [{ deckyName: name }],
      requestId: "x".repeat(4 * MIB),
    });

    const answer = await sendRaw(protocol, "Accept", message);

    expect(outcome(answer)).toEqual({
      code: Code.ResourceExhausted,
      message: `the request message is ${message.length} bytes; RECEIVE_MAX_BYTES allows at most ${4 * MIB}`,
    });
    expect(await rowsNamed(name)).toEqual([]);
  },
);

test("a Heartbeat message over the receive limit ends the stream with RESOURCE_EXHAUSTED", async () => {
  const { host, name, row } = await pendingRow();
  const message = encode(HeartbeatRequestSchema, {
    hostUuid: host,
    agentVersion: "x".repeat(4 * MIB),
    deltas: [
      { deckyName: name, operation: Operation.DEPLOY, status: Status.RUNNING },
    ],
  });

  const answer = await sendRaw("connect", "Heartbeat", message);

  expect(outcome(answer)).toEqual({
    code: Code.ResourceExhausted,
    message: `the request message is ${message.length} bytes; RECEIVE_MAX_BYTES allows at most ${4 * MIB}`,
  });
  expect(await statusOf(row.id)).toBe(Status.PENDING);
});

test("a message of exactly 4 MiB is read and validated", async () => {
  // A 1-byte tag and a 4-byte length before the token.
  const message = encode(ListRequestSchema, {
    pageToken: "t".repeat(4 * MIB - 5),
  });
  expect(message.length).toBe(4 * MIB);

  const answer = await sendRaw("grpc", "List", message);

  expect(outcome(answer)).toEqual({
    code: Code.InvalidArgument,
    message: "page_token is not a token this service issued",
  });
});

test("a gzip message that inflates past the receive limit is RESOURCE_EXHAUSTED", async () => {
  const message = encode(ListRequestSchema, {
    pageToken: "t".repeat(5 * MIB),
  });

  const answer = await rawCall(
    server.url,
    "grpc",
    "List",
    envelope(gzipSync(message), 1),
    { headers: { "grpc-encoding": "gzip" } },
  );

  expect(outcome(answer)).toEqual({
    code: Code.ResourceExhausted,
    message: `the request message is over ${4 * MIB} bytes once decompressed; RECEIVE_MAX_BYTES allows at most ${4 * MIB}`,
  });
});

test("a gzip-compressed request is decoded and served", async () => {
  const transport: Transport = createGrpcTransport({
    baseUrl: server.url,
    sendCompression: compressionGzip,
    compressMinBytes: 0,
  });
  const name = deckyName();

  const { rows } = await createClient(LifecycleService, transport).accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: name }],
  });

  expect(rows.map((row) => row.deckyName)).toEqual([name]);
});

test.each([
  {
    case: "gzip data that is not gzip",
    body: envelope(Buffer.from("not gzip"), 1),
    headers: { "grpc-encoding": "gzip" },
    message: "a request message is not valid gzip data",
  },
  {
    case: "a gzip stream cut short",
    body: envelope(gzipSync(Buffer.from("x".repeat(100))).subarray(0, 12), 1),
    headers: { "grpc-encoding": "gzip" },
    message: "a request message is not valid gzip data",
  },
  {
    case: "a message marked compressed without a compression",
    body: envelope(Buffer.from([0x08, 0x01]), 1),
    headers: {},
    message:
      "a request message is marked compressed, but the request names no compression",
  },
  {
    case: "an envelope that ends before its length",
    body: envelope(Buffer.from([0x08, 0x01]), 0, 10),
    headers: {},
    message: "protocol error: incomplete envelope",
  },
  {
    case: "a header shorter than 5 bytes",
    body: Buffer.from([0, 0, 0]),
    headers: {},
    message: "protocol error: incomplete envelope",
  },
  {
    case: "no message",
    body: Buffer.alloc(0),
    headers: {},
    message: "Accept takes one request message; the request has none",
  },
  {
    case: "two messages",
    body: Buffer.concat([
      envelope(Buffer.from([0x08, 0x01])),
      envelope(Buffer.from([0x08, 0x01])),
    ]),
    headers: {},
    message: "Accept takes one request message; the request has more",
  },
])("Accept over gRPC refuses $case with INVALID_ARGUMENT", async (framing) => {
  const answer = await rawCall(server.url, "grpc", "Accept", framing.body, {
    headers: framing.headers,
  });

  expect(outcome(answer)).toEqual({
    code: Code.InvalidArgument,
    message: framing.message,
  });
});

test("a unary Connect body with Content-Encoding gzip that is not gzip is INVALID_ARGUMENT", async () => {
  const answer = await rawCall(
    server.url,
    "connect-proto",
    "Report",
    Buffer.from("plain"),
    { headers: { "content-encoding": "gzip" } },
  );

  expect(answer.httpStatus).toBe(400);
  expect(outcome(answer)).toEqual({
    code: Code.InvalidArgument,
    message: "a request message is not valid gzip data",
  });
});

test("Watch refuses a request without its one message", async () => {
  const answer = await rawCall(
    server.url,
    "connect-stream-proto",
    "Watch",
    Buffer.alloc(0),
  );

  expect(outcome(answer)).toEqual({
    code: Code.InvalidArgument,
    message: "Watch takes one request message; the request has none",
  });
});

// Proto3 enums are open: an unknown number decodes, and validation must
// refuse it by name.

test("Accept refuses an operation number the contract does not define", async () => {
  const name = deckyName();

  const error = await failure(
    server.grpc.accept({
      operation: 7 as Operation,
      targets: [{ deckyName: name }],
    }),
  );

  expect([error.code, error.rawMessage]).toEqual([
    Code.InvalidArgument,
    "operation must be OPERATION_DEPLOY or OPERATION_MUTATE, not 7",
  ]);
  expect(await rowsNamed(name)).toEqual([]);
});

test("List refuses unknown operation and status numbers, naming the field", async () => {
  const operation = await failure(
    server.grpc.list({ operation: -1 as Operation }),
  );
  const status = await failure(
    server.grpc.list({ statuses: [Status.PENDING, 9 as Status] }),
  );

  expect([operation.code, operation.rawMessage]).toEqual([
    Code.InvalidArgument,
    "operation must be OPERATION_DEPLOY or OPERATION_MUTATE, not -1",
  ]);
  expect([status.code, status.rawMessage]).toEqual([
    Code.InvalidArgument,
    "statuses[1] must be a known status other than STATUS_UNSPECIFIED, not 9",
  ]);
});

test("Watch refuses an unknown operation number before any message", async () => {
  const error = await failure(
    (async () => {
      for await (const _ of server.connect.watch({
        operation: 3 as Operation,
      })) {
        throw new Error("Watch sent a message");
      }
    })(),
  );

  expect([error.code, error.rawMessage]).toEqual([
    Code.InvalidArgument,
    "operation must be OPERATION_DEPLOY or OPERATION_MUTATE, not 3",
  ]);
});

test("Report refuses an unknown status number and leaves the row as it was", async () => {
  const { row } = await pendingRow();

  const error = await failure(
    server.grpc.report({ lifecycleId: row.id, status: 5 as Status }),
  );

  expect([error.code, error.rawMessage]).toEqual([
    Code.InvalidArgument,
    "status must be a known status other than STATUS_UNSPECIFIED, not 5",
  ]);
  expect(await statusOf(row.id)).toBe(Status.PENDING);
});

test("Heartbeat rejects deltas with unknown enum numbers and applies the rest", async () => {
  const { host, name, row } = await pendingRow();

  const response = await server.grpc.heartbeat(
    (async function* () {
      yield create(HeartbeatRequestSchema, {
        hostUuid: host,
        deltas: [
          { deckyName: name, operation: 9 as Operation, status: Status.FAILED },
          {
            deckyName: name,
            operation: Operation.DEPLOY,
            status: 7 as Status,
          },
          {
            deckyName: name,
            operation: Operation.DEPLOY,
            status: Status.RUNNING,
          },
        ],
      });
    })(),
  );

  expect(
    response.outcomes.map((outcome) => [
      outcome.deltaIndex,
      outcome.result,
      outcome.detail,
    ]),
  ).toEqual([
    [
      0,
      DeltaOutcome_Result.REJECTED,
      "operation must be OPERATION_DEPLOY or OPERATION_MUTATE",
    ],
    [
      1,
      DeltaOutcome_Result.REJECTED,
      "status must be STATUS_RUNNING, STATUS_SUCCEEDED or STATUS_FAILED",
    ],
  ]);
  expect(response.applied).toBe(1);
  expect(await statusOf(row.id)).toBe(Status.RUNNING);
});

// PostgreSQL text cannot hold NUL: every string that is stored or compared
// refuses it as INVALID_ARGUMENT before any statement runs.

test.each([
  {
    field: "targets[0].decky_name",
    init: { deckyName: "ssh\0-01" },
    message: `targets[0].decky_name "ssh\\u0000-01" must match ${DECKY_PATTERN}`,
  },
  {
    field: "targets[0].host_uuid",
    init: { hostUuid: `${HOST}\0` },
    message: `targets[0].host_uuid "${HOST}\\u0000" is not a UUID`,
  },
  {
    field: "request_id",
    init: { requestId: "key\0" },
    message: "request_id must not contain NUL characters",
  },
])(
  "Accept refuses a NUL in $field and writes nothing",
  async ({ init, message }) => {
    const name = deckyName();
    const {
      deckyName: badName,
      hostUuid,
      requestId,
    } = {
      deckyName: name,
      hostUuid: undefined as string | undefined,
      requestId: "",
      ...init,
    };

    const error = await failure(
      server.grpc.accept({
        operation: Operation.DEPLOY,
        targets: [
          {
            deckyName: badName,
            ...(hostUuid === undefined ? {} : { hostUuid }),
          },
        ],
        requestId,
      }),
    );

    expect([error.code, error.rawMessage]).toEqual([
      Code.InvalidArgument,
      message,
    ]);
    expect(await rowsNamed(name)).toEqual([]);
  },
);

test.each([
  {
    field: "decky_name",
    request: { deckyName: "ssh-01\0" },
    message: `decky_name "ssh-01\\u0000" must match ${DECKY_PATTERN}`,
  },
  {
    field: "host_uuid",
    request: { hostUuid: `\0${HOST}` },
    message: `host_uuid "\\u0000${HOST}" is not a UUID`,
  },
  {
    field: "ids[0]",
    request: { ids: [`${HOST}\0`] },
    message: `ids[0] "${HOST}\\u0000" is not a UUID`,
  },
  {
    field: "page_token",
    request: { pageToken: "a\0.b" },
    message: "page_token is not a token this service issued",
  },
])("List refuses a NUL in $field", async ({ request, message }) => {
  const error = await failure(server.connect.list(request));

  expect([error.code, error.rawMessage]).toEqual([
    Code.InvalidArgument,
    message,
  ]);
});

test("Watch refuses a NUL in decky_name", async () => {
  const error = await failure(
    (async () => {
      for await (const _ of server.grpc.watch({ deckyName: "\0" })) {
        throw new Error("Watch sent a message");
      }
    })(),
  );

  expect([error.code, error.rawMessage]).toEqual([
    Code.InvalidArgument,
    `decky_name "\\u0000" must match ${DECKY_PATTERN}`,
  ]);
});

/** Sends one Heartbeat message; the error, or undefined if none. */
async function heartbeatOnce(
  init: MessageInitShape<typeof HeartbeatRequestSchema>,
) {
  return server.grpc.heartbeat(
    (async function* () {
      yield create(HeartbeatRequestSchema, init);
    })(),
  );
}

test("Heartbeat refuses a NUL in agent_version and moves nothing", async () => {
  const { host, name, row } = await pendingRow();

  const error = await failure(
    heartbeatOnce({
      hostUuid: host,
      agentVersion: "1.4\0",
      deltas: [
        {
          deckyName: name,
          operation: Operation.DEPLOY,
          status: Status.RUNNING,
        },
      ],
    }),
  );

  expect([error.code, error.rawMessage]).toEqual([
    Code.InvalidArgument,
    "agent_version must not contain NUL characters",
  ]);
  expect(await statusOf(row.id)).toBe(Status.PENDING);
});

test("Heartbeat rejects a delta whose error holds a NUL and leaves its row open", async () => {
  const { host, name, row } = await pendingRow();

  const response = await heartbeatOnce({
    hostUuid: host,
    deltas: [
      {
        deckyName: name,
        operation: Operation.DEPLOY,
        status: Status.FAILED,
        error: "disk\0full",
      },
    ],
  });

  expect(
    response.outcomes.map((outcome) => [outcome.result, outcome.detail]),
  ).toEqual([
    [DeltaOutcome_Result.REJECTED, "error must not contain NUL characters"],
  ]);
  expect(await statusOf(row.id)).toBe(Status.PENDING);
});

test("Report refuses a NUL in error and leaves the row open", async () => {
  const { row } = await pendingRow();

  const error = await failure(
    server.grpcWeb.report({
      lifecycleId: row.id,
      status: Status.FAILED,
      error: "disk\0full",
    }),
  );

  expect([error.code, error.rawMessage]).toEqual([
    Code.InvalidArgument,
    "error must not contain NUL characters",
  ]);
  expect(await statusOf(row.id)).toBe(Status.PENDING);
});

// Huge strings: a field with a limit refuses what is over it; error text,
// which the contract keeps at 2000 characters, is cut.

test("Accept refuses a 3 MiB decky name, quoting only its first 80 characters", async () => {
  const error = await failure(
    server.grpc.accept({
      operation: Operation.DEPLOY,
      targets: [{ deckyName: "a".repeat(3 * MIB) }],
    }),
  );

  expect([error.code, error.rawMessage]).toEqual([
    Code.InvalidArgument,
    `targets[0].decky_name "${"a".repeat(80)}…" must match ${DECKY_PATTERN}`,
  ]);
});

test("Accept refuses a request_id over 200 characters and writes nothing", async () => {
  const name = deckyName();

  const error = await failure(
    server.grpc.accept({
      operation: Operation.DEPLOY,
      targets: [{ deckyName: name }],
      requestId: "k".repeat(201),
    }),
  );

  expect([error.code, error.rawMessage]).toEqual([
    Code.InvalidArgument,
    "request_id is 201 characters long; at most 200 are allowed",
  ]);
  expect(await rowsNamed(name)).toEqual([]);
});

test("Heartbeat refuses an agent_version over 200 characters", async () => {
  const error = await failure(
    heartbeatOnce({ hostUuid: randomUUID(), agentVersion: "v".repeat(201) }),
  );

  expect([error.code, error.rawMessage]).toEqual([
    Code.InvalidArgument,
    "agent_version is 201 characters long; at most 200 are allowed",
  ]);
});

test("List refuses a 2 MiB page token as one it did not issue", async () => {
  const error = await failure(
    server.grpc.list({ pageToken: `${"p".repeat(2 * MIB)}.sig` }),
  );

  expect([error.code, error.rawMessage]).toEqual([
    Code.InvalidArgument,
    "page_token is not a token this service issued",
  ]);
});

test("Report refuses error text over 1 MiB and leaves the row open", async () => {
  const { row } = await pendingRow();

  const error = await failure(
    server.grpc.report({
      lifecycleId: row.id,
      status: Status.FAILED,
      error: "e".repeat(MIB + 1),
    }),
  );

  expect([error.code, error.rawMessage]).toEqual([
    Code.InvalidArgument,
    `error is ${MIB + 1} characters long; at most ${MIB} are allowed`,
  ]);
  expect(await statusOf(row.id)).toBe(Status.PENDING);
});

test("Report keeps the first 2000 characters of longer error text", async () => {
  const { row } = await pendingRow();
  const text = `${"é".repeat(1999)}🙂tail that is cut`;

  const response = await server.grpc.report({
    lifecycleId: row.id,
    status: Status.FAILED,
    error: text,
  });

  expect(response.row?.error).toBe(`${"é".repeat(1999)}🙂`);
  expect(Array.from(response.row?.error ?? "")).toHaveLength(2000);
});

test("Heartbeat keeps the first 2000 characters of a delta's longer error text", async () => {
  const { host, name, row } = await pendingRow();

  await heartbeatOnce({
    hostUuid: host,
    deltas: [
      {
        deckyName: name,
        operation: Operation.DEPLOY,
        status: Status.FAILED,
        error: "x".repeat(100_000),
      },
    ],
  });

  const { rows } = await server.grpc.list({ ids: [row.id] });
  expect(rows[0]?.status).toBe(Status.FAILED);
  expect(rows[0]?.error).toBe("x".repeat(2000));
});

// Empty strings: required fields refuse them; optional keys treat them as
// unset.

test.each([
  {
    field: "targets[0].decky_name",
    call: () =>
      server.grpc.accept({
        operation: Operation.DEPLOY,
        targets: [{ deckyName: "" }],
      }),
    message: `targets[0].decky_name "" must match ${DECKY_PATTERN}`,
  },
  {
    field: "targets[0].host_uuid",
    call: () =>
      server.grpc.accept({
        operation: Operation.DEPLOY,
        targets: [{ deckyName: deckyName(), hostUuid: "" }],
      }),
    message: 'targets[0].host_uuid "" is not a UUID',
  },
  {
    field: "List decky_name",
    call: () => server.grpc.list({ deckyName: "" }),
    message: `decky_name "" must match ${DECKY_PATTERN}`,
  },
  {
    field: "List ids[0]",
    call: () => server.grpc.list({ ids: [""] }),
    message: 'ids[0] "" is not a UUID',
  },
  {
    field: "Heartbeat host_uuid",
    call: () => heartbeatOnce({ hostUuid: "" }),
    message: 'host_uuid "" is not a UUID',
  },
  {
    field: "Report lifecycle_id",
    call: () => server.grpc.report({ lifecycleId: "", status: Status.RUNNING }),
    message: 'lifecycle_id "" is not a UUID',
  },
])("an empty $field is INVALID_ARGUMENT", async ({ call, message }) => {
  const error = await failure(call());

  expect([error.code, error.rawMessage]).toEqual([
    Code.InvalidArgument,
    message,
  ]);
});

test("an empty request_id is no idempotency key: the same Accept again is refused as a second open row", async () => {
  const name = deckyName();
  const request = {
    operation: Operation.DEPLOY,
    targets: [{ deckyName: name }],
    requestId: "",
  };
  const { lifecycleIds } = await server.grpc.accept(request);

  const error = await failure(server.grpc.accept(request));

  expect([error.code, error.rawMessage]).toEqual([
    Code.FailedPrecondition,
    `decky ${name} already has an open deploy row ${lifecycleIds[0]}; wait for it to finish`,
  ]);
});

test("an empty page_token reads the first page, and an empty agent_version is recorded as such", async () => {
  const { name, row } = await pendingRow();

  const page = await server.grpc.list({ deckyName: name, pageToken: "" });
  const beat = await heartbeatOnce({
    hostUuid: randomUUID(),
    agentVersion: "",
  });

  expect(page.rows.map((listed) => listed.id)).toEqual([row.id]);
  expect([beat.messages, beat.applied, beat.outcomes]).toEqual([1, 0, []]);
});

test("Report stores empty error text on a FAILED row as empty", async () => {
  const { row } = await pendingRow();

  const response = await server.grpc.report({
    lifecycleId: row.id,
    status: Status.FAILED,
    error: "",
  });

  expect(response.row?.status).toBe(Status.FAILED);
  expect(response.row?.error).toBe("");
});
