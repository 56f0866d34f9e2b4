import { randomInt, randomUUID } from "node:crypto";
import net from "node:net";
import { gzipSync } from "node:zlib";
import {
  create,
  type DescMessage,
  type MessageInitShape,
  toBinary,
  toJsonString,
} from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, expect, test, vi } from "vitest";
import {
  DecommissionHostRequestSchema,
  EnrollHostRequestSchema,
  HostState,
  ListHostsRequestSchema,
  RotateHostTokenRequestSchema,
} from "../../gen/decky/lifecycle/v1/host_pb.js";
import {
  AcceptRequestSchema,
  HeartbeatRequestSchema,
  ListRequestSchema,
  Operation,
  ReportRequestSchema,
  Status,
  WatchRequestSchema,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import {
  CreateTokenRequestSchema,
  ListTokensRequestSchema,
  RevokeTokenRequestSchema,
  Role,
} from "../../gen/decky/lifecycle/v1/token_pb.js";
import {
  closeRawSessions,
  envelope,
  isEnveloped,
  isJson,
  OK,
  type Protocol,
  type RawAnswer,
  rawCall,
  type StatusCode,
} from "../support/raw-rpc.js";
import { deckyName, serveThisFile } from "../support/test-server.js";

/*
 * Sends random and mutated bytes to every RPC in every protocol for a
 * bounded time and checks that each call gets a proper answer. A failure
 * prints the seed; FUZZ_SEED=<seed> replays the same inputs (FUZZ_MS sets
 * the time spent).
 */

// A valid Watch answers within a second even when nothing matches it (a
// resume for a host with no changes, say): a call counts as answered by its
// first message.
const server = serveThisFile({ KEEPALIVE_INTERVAL_MS: "1000" });
afterAll(closeRawSessions);

const SEED = Number(process.env.FUZZ_SEED ?? randomInt(2 ** 31));
const BUDGET_MS = Number(process.env.FUZZ_MS ?? 6000);
const CALL_TIMEOUT_MS = 10_000;
const CONCURRENT_CALLS = 6;

/** Every code a call may end with when its input is wrong or merely odd. */
const PROPER_CODES: ReadonlySet<StatusCode> = new Set([
  OK,
  Code.InvalidArgument,
  Code.ResourceExhausted,
  Code.NotFound,
  Code.FailedPrecondition,
  Code.AlreadyExists,
  Code.OutOfRange,
  Code.PermissionDenied,
]);

/** What a stack trace or a source path looks like in an answer. */
const LEAK =
  /\n\s+at |\bat [\w.<>]+ \(|\.[cm]?[jt]s:\d+|node_modules|\/work\/|\/tmp\/|file:\/\//;

/** mulberry32: small, fast and the same on every machine for one seed. */
function prng(seed: number) {
  let state = seed >>> 0;
  const next = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (below: number) => Math.floor(next() * below);
  return {
    int,
    chance: (probability: number) => next() < probability,
    pick: <T>(items: readonly T[]): T => items[int(items.length)]!,
    bytes: (length: number) =>
      Buffer.from(Array.from({ length }, () => int(256))),
  };
}
type Random = ReturnType<typeof prng>;

/** Every RPC, with the service it belongs to. */
const SERVICE_OF = {
  Accept: "LifecycleService",
  List: "LifecycleService",
  Watch: "LifecycleService",
  Heartbeat: "LifecycleService",
  Report: "LifecycleService",
  ListHosts: "HostService",
  EnrollHost: "HostService",
  RotateHostToken: "HostService",
  DecommissionHost: "HostService",
  CreateToken: "TokenService",
  ListTokens: "TokenService",
  RevokeToken: "TokenService",
} as const;
type Method = keyof typeof SERVICE_OF;
const STREAMING: ReadonlySet<Method> = new Set(["Watch", "Heartbeat"]);

/** Valid messages of one RPC, to mutate, in binary and in JSON. */
interface Seeds {
  readonly binary: Buffer[];
  readonly json: Buffer[];
}

function seedsOf<Desc extends DescMessage>(
  schema: Desc,
  inits: MessageInitShape<Desc>[],
): Seeds {
  const messages = inits.map((init) => create(schema, init));
  return {
    binary: messages.map((message) => Buffer.from(toBinary(schema, message))),
    json: messages.map((message) => Buffer.from(toJsonString(schema, message))),
  };
}

let seeds: Record<Method, Seeds>;

beforeAll(async () => {
  const host = randomUUID();
  const name = deckyName("fuzz");
  const { rows } = await server.grpc.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: name, hostUuid: host }],
  });
  const id = rows[0]!.id;
  seeds = {
    Accept: seedsOf(AcceptRequestSchema, [
      {
        operation: Operation.DEPLOY,
        targets: [{ deckyName: "fuzz-a", hostUuid: host }, { deckyName: "b" }],
        requestId: "fuzz-request",
      },
      { operation: Operation.MUTATE, targets: [{ deckyName: "fuzz-c" }] },
    ]),
    List: seedsOf(ListRequestSchema, [
      {
        ids: [id, randomUUID()],
        statuses: [Status.PENDING, Status.FAILED],
        pageSize: 20,
      },
      { deckyName: name, hostUuid: host, operation: Operation.DEPLOY },
    ]),
    Watch: seedsOf(WatchRequestSchema, [
      { ids: [id] },
      { hostUuid: host, afterRevision: 1n },
      { deckyName: name, operation: Operation.DEPLOY },
    ]),
    Heartbeat: seedsOf(HeartbeatRequestSchema, [
      {
        hostUuid: randomUUID(),
        agentVersion: "1.4.2",
        deltas: [
          {
            deckyName: name,
            operation: Operation.DEPLOY,
            status: Status.FAILED,
            error: "port 80 already in use",
            completedAt: timestampFromDate(new Date()),
            lifecycleId: id,
          },
        ],
      },
      { hostUuid: randomUUID(), agentVersion: "1.4.2" },
    ]),
    Report: seedsOf(ReportRequestSchema, [
      { lifecycleId: randomUUID(), status: Status.RUNNING },
      { lifecycleId: id, status: Status.FAILED, error: "lost" },
    ]),
    ListHosts: seedsOf(ListHostsRequestSchema, [
      { states: [HostState.ALIVE, HostState.LOST], pageSize: 10 },
      { pageToken: "not-a-token" },
    ]),
    EnrollHost: seedsOf(EnrollHostRequestSchema, [
      { name: "fuzz-host" },
      {
        name: "fuzz-pinned",
        hostUuid: randomUUID(),
        certificateFingerprint: "ab".repeat(32),
      },
    ]),
    RotateHostToken: seedsOf(RotateHostTokenRequestSchema, [
      { hostUuid: randomUUID() },
    ]),
    DecommissionHost: seedsOf(DecommissionHostRequestSchema, [
      { hostUuid: randomUUID() },
    ]),
    CreateToken: seedsOf(CreateTokenRequestSchema, [
      { name: "fuzz-viewer", role: Role.VIEWER },
    ]),
    ListTokens: seedsOf(ListTokensRequestSchema, [
      { showRevoked: true, pageSize: 5 },
    ]),
    RevokeToken: seedsOf(RevokeTokenRequestSchema, [{ tokenId: randomUUID() }]),
  };
});

/** A valid message changed in one of the ways that break decoders. */
function mutate(random: Random, message: Buffer): Buffer {
  const copy = Buffer.from(message);
  switch (random.int(9)) {
    case 0:
      return random.bytes(
        random.chance(0.9) ? random.int(64) : random.int(4096),
      );
    case 1: {
      for (let flips = 1 + random.int(8); flips > 0 && copy.length; flips--) {
        const at = random.int(copy.length);
        copy[at] = copy[at]! ^ (1 << random.int(8));
      }
      return copy;
    }
    case 2: {
      for (
        let writes = 1 + random.int(4);
        writes > 0 && copy.length;
        writes--
      ) {
        copy[random.int(copy.length)] = random.pick([0x00, 0x7f, 0x80, 0xff]);
      }
      return copy;
    }
    case 3:
      return copy.subarray(0, random.int(copy.length + 1));
    case 4:
      return Buffer.concat([copy, random.bytes(1 + random.int(32))]);
    case 5: {
      const at = random.int(copy.length + 1);
      return Buffer.concat([
        copy.subarray(0, at),
        random.bytes(1 + random.int(16)),
        copy.subarray(at),
      ]);
    }
    case 6:
      return Buffer.concat([copy, copy]);
    case 7: {
      // A string or a length that runs past the end.
      const at = random.int(copy.length + 1);
      return Buffer.concat([
        copy.subarray(0, at),
        Buffer.from([0x0a, 0xff, 0xff, 0xff, 0x0f]),
        copy.subarray(at),
      ]);
    }
    default:
      return copy;
  }
}

/** A request body: the payload framed well, badly, or not at all. */
function frame(
  random: Random,
  protocol: Protocol,
  payload: Buffer,
): { body: Buffer; headers: Record<string, string> } {
  if (!isEnveloped(protocol)) {
    if (random.chance(0.1)) {
      const gzip = gzipSync(payload);
      return {
        body: random.chance(0.5)
          ? gzip
          : gzip.subarray(0, random.int(gzip.length)),
        headers: { "content-encoding": "gzip" },
      };
    }
    return { body: payload, headers: {} };
  }
  const encodingHeader =
    protocol === "connect-stream-proto" || protocol === "connect-stream-json"
      ? "connect-content-encoding"
      : "grpc-encoding";
  switch (random.int(10)) {
    case 0:
      return {
        body: envelope(payload, 0, random.int(2 ** 32)),
        headers: {},
      };
    case 1:
      return {
        body: envelope(
          payload,
          0,
          Math.max(0, payload.length + random.int(9) - 4),
        ),
        headers: {},
      };
    case 2:
      return { body: envelope(payload, random.int(256)), headers: {} };
    case 3: {
      const gzip = gzipSync(payload);
      const data = random.chance(0.5)
        ? gzip
        : gzip.subarray(0, random.int(gzip.length));
      return { body: envelope(data, 1), headers: { [encodingHeader]: "gzip" } };
    }
    case 4:
      return {
        body: Buffer.concat([envelope(payload), envelope(payload)]),
        headers: {},
      };
    case 5:
      return { body: Buffer.alloc(0), headers: {} };
    case 6:
      return {
        body: Buffer.concat([
          envelope(payload),
          random.bytes(1 + random.int(8)),
        ]),
        headers: {},
      };
    case 7:
      return { body: payload, headers: {} };
    default:
      return { body: envelope(payload), headers: {} };
  }
}

function protocolsOf(method: Method): Protocol[] {
  return STREAMING.has(method)
    ? ["grpc", "grpc-web", "connect-stream-proto", "connect-stream-json"]
    : ["grpc", "grpc-web", "connect-proto", "connect-json"];
}

const METHODS = Object.keys(SERVICE_OF) as Method[];
const COMBINATIONS = METHODS.flatMap((method) =>
  protocolsOf(method).map((protocol) => ({ method, protocol })),
);

/** What one fuzzed call sent and got, for the failure report. */
interface Trial {
  readonly index: number;
  readonly method: Method;
  readonly protocol: Protocol;
  readonly body: Buffer;
  readonly headers: Record<string, string>;
  readonly answer?: RawAnswer;
  readonly error?: string;
}

/** Why a trial's answer is not a proper one; undefined if it is. */
function problemOf(trial: Trial): string | undefined {
  const { answer } = trial;
  if (!answer) return `no answer: ${trial.error}`;
  if (answer.httpStatus >= 500) return `HTTP ${answer.httpStatus}`;
  if (answer.code === undefined) {
    return `HTTP ${answer.httpStatus} without an RPC status`;
  }
  if (!PROPER_CODES.has(answer.code)) {
    return `code ${Code[answer.code]}: ${answer.message}`;
  }
  if (LEAK.test(answer.text)) return `a stack trace or path: ${answer.text}`;
  return undefined;
}

function reportOf(trial: Trial, problem: string): string {
  return `#${trial.index} ${trial.method} over ${trial.protocol} ${JSON.stringify(trial.headers)} body ${trial.body.toString("hex").slice(0, 400)}: ${problem}`;
}

test(
  `every RPC in every protocol answers random and mutated bytes with a proper code (seed ${SEED})`,
  async () => {
    // connect-node prints to the console when a handler fails outright.
    const consoleErrors = vi.spyOn(console, "error");
    const random = prng(SEED);
    const deadline = performance.now() + BUDGET_MS;
    const trials: Trial[] = [];
    let next = 0;

    // Inputs are drawn one after another from one generator: input #n is the
    // same for a seed however the answers are timed.
    const draw = () => {
      const index = next++;
      const { method, protocol } = COMBINATIONS[index % COMBINATIONS.length]!;
      const source = isJson(protocol)
        ? seeds[method].json
        : seeds[method].binary;
      const payload = random.chance(0.1)
        ? random.pick(source)
        : mutate(random, random.pick(source));
      return { index, method, protocol, ...frame(random, protocol, payload) };
    };
    const worker = async () => {
      while (performance.now() < deadline) {
        const input = draw();
        try {
          const answer = await rawCall(
            server.url,
            input.protocol,
            input.method,
            input.body,
            {
              headers: input.headers,
              service: SERVICE_OF[input.method],
              timeoutMs: CALL_TIMEOUT_MS,
            },
          );
          trials.push({ ...input, answer });
        } catch (error) {
          trials.push({ ...input, error: String(error) });
        }
      }
    };
    await Promise.all(Array.from({ length: CONCURRENT_CALLS }, worker));

    const problems = trials.flatMap((trial) => {
      const problem = problemOf(trial);
      return problem ? [reportOf(trial, problem)] : [];
    });
    expect(problems, `seed ${SEED}`).toEqual([]);
    expect(consoleErrors.mock.calls, `seed ${SEED}`).toEqual([]);
    consoleErrors.mockRestore();
    const reached = new Set(trials.map((t) => `${t.method} ${t.protocol}`));
    expect(reached.size, `seed ${SEED}`).toBe(COMBINATIONS.length);
    const refused = trials.filter(
      (t) => t.answer?.code === Code.InvalidArgument,
    );
    expect(refused.length, `seed ${SEED}`).toBeGreaterThan(0);

    // The server is still up and serves a normal call in every protocol.
    const name = deckyName("after-fuzz");
    const { rows } = await server.grpc.accept({
      operation: Operation.DEPLOY,
      targets: [{ deckyName: name }],
    });
    const listed = await Promise.all(
      [server.grpc, server.grpcWeb, server.connect].map(
        async (client) => (await client.list({ deckyName: name })).rows,
      ),
    );
    expect(listed).toEqual([rows, rows, rows]);
  },
  BUDGET_MS + 60_000,
);

test(`bytes that are not HTTP at all never take the server down (seed ${SEED})`, async () => {
  const random = prng(SEED ^ 0x5eed);
  const preface = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
  const starts = [
    preface,
    Buffer.from(
      "POST /decky.lifecycle.v1.LifecycleService/Accept HTTP/1.1\r\n",
    ),
    Buffer.from(
      "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n",
    ),
    Buffer.alloc(0),
  ];
  const { port } = new URL(server.url);
  const answers: string[] = [];

  await Promise.all(
    Array.from({ length: 40 }, async () => {
      const bytes = Buffer.concat([
        random.pick(starts),
        random.bytes(random.int(512)),
      ]);
      const socket = net.connect(Number(port), "127.0.0.1");
      const received: Buffer[] = [];
      socket.on("data", (chunk: Buffer) => received.push(chunk));
      socket.on("error", () => {});
      socket.end(bytes);
      await new Promise((resolve) => setTimeout(resolve, 300));
      socket.destroy();
      answers.push(Buffer.concat(received).toString("latin1"));
    }),
  );

  for (const answer of answers) expect(answer).not.toMatch(LEAK);
  const name = deckyName("after-garbage");
  const { lifecycleIds } = await server.grpc.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: name }],
  });
  const { rows } = await server.connect.list({ ids: lifecycleIds });
  expect(rows.map((row) => row.deckyName)).toEqual([name]);
});
