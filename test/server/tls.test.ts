import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import tls from "node:tls";
import {
  create,
  fromBinary,
  type MessageInitShape,
  toBinary,
} from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createClient,
  type Transport,
} from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import {
  Client as GrpcClient,
  credentials as grpcCredentials,
  status as grpcStatus,
  Metadata,
  type ServiceError,
} from "@grpc/grpc-js";
import type { Browser } from "playwright-core";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { HostService } from "../../gen/decky/lifecycle/v1/host_pb.js";
import {
  type HeartbeatRequest,
  HeartbeatRequestSchema,
  type HeartbeatResponse,
  HeartbeatResponseSchema,
  LifecycleService,
  type ListRequest,
  ListRequestSchema,
  type ListResponse,
  ListResponseSchema,
  Operation,
  Status,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { TokenService } from "../../gen/decky/lifecycle/v1/token_pb.js";
import { loadSettings, SettingsError } from "../../src/config/settings.js";
import {
  bundlePageScript,
  launchChromium,
  type PageServer,
  servePage,
} from "../support/browser.js";
import {
  authorizationHeader,
  type CallerClients,
  storeToken,
} from "../support/callers.js";
import {
  type CertificateAuthority,
  type CertificateWorkshop,
  type KeyPair,
  openCertificateWorkshop,
} from "../support/certificates.js";
import {
  type LogLine,
  spawnServer,
  stopProcess,
} from "../support/server-process.js";
import {
  createTestDatabase,
  deckyName,
  startTestServer,
  type TestDatabase,
  type TestServer,
} from "../support/test-server.js";

// Spawning tsx and opening the embedded database take seconds each.
const PROCESS_TIMEOUT_MS = 120_000;
const LIST_PATH = `/${LifecycleService.typeName}/${LifecycleService.method.list.name}`;
const HEARTBEAT_PATH = `/${LifecycleService.typeName}/${LifecycleService.method.heartbeat.name}`;

let workshop: CertificateWorkshop;
let ca: CertificateAuthority;
let serverPair: KeyPair;
let workerPair: KeyPair;
let strangerPair: KeyPair;
let database: TestDatabase;

beforeAll(async () => {
  workshop = await openCertificateWorkshop();
  ca = await workshop.createAuthority("decky-test-ca");
  serverPair = await ca.issueServer("decky-lifecycle");
  workerPair = await ca.issueClient("worker-1");
  // Signed by a CA the server does not trust.
  const stranger = await workshop.createAuthority("stranger-ca");
  strangerPair = await stranger.issueClient("worker-1");
  database = await createTestDatabase();
});

afterAll(async () => {
  await database?.drop();
  await workshop?.remove();
});

/** Every client transport a caller may use, trusting the test CA. */
function transportsTo(
  baseUrl: string,
  client?: KeyPair,
): Record<string, Transport> {
  const nodeOptions = {
    ca: ca.cert,
    ...(client ? { cert: client.cert, key: client.key } : {}),
  };
  return {
    "gRPC over HTTP/2": createGrpcTransport({ baseUrl, nodeOptions }),
    "Connect over HTTP/2": createConnectTransport({
      baseUrl,
      httpVersion: "2",
      nodeOptions,
    }),
    "Connect over HTTP/1.1": createConnectTransport({
      baseUrl,
      httpVersion: "1.1",
      nodeOptions,
    }),
    "gRPC-Web over HTTP/1.1": createGrpcWebTransport({
      baseUrl,
      httpVersion: "1.1",
      nodeOptions,
    }),
  };
}

/** List on raw @grpc/grpc-js over TLS, as a worker agent would call it. */
function grpcJsList(
  port: number,
  request: MessageInitShape<typeof ListRequestSchema>,
  client?: KeyPair,
): Promise<ListResponse> {
  const credentials = grpcCredentials.createSsl(
    Buffer.from(ca.cert),
    client ? Buffer.from(client.key) : null,
    client ? Buffer.from(client.cert) : null,
  );
  const grpc = new GrpcClient(`127.0.0.1:${port}`, credentials);
  return new Promise<ListResponse>((resolve, reject) => {
    grpc.makeUnaryRequest<ListRequest, ListResponse>(
      LIST_PATH,
      (message) => Buffer.from(toBinary(ListRequestSchema, message)),
      (bytes) => fromBinary(ListResponseSchema, bytes),
      create(ListRequestSchema, request),
      (error, value) => (error ? reject(error) : resolve(value!)),
    );
  }).finally(() => grpc.close());
}

/**
 * One Heartbeat message on raw @grpc/grpc-js over mutual TLS, with a bearer
 * token, as a worker agent sends it.
 */
function grpcJsHeartbeat(
  port: number,
  client: KeyPair,
  token: string,
  request: MessageInitShape<typeof HeartbeatRequestSchema>,
): Promise<HeartbeatResponse> {
  const grpc = new GrpcClient(
    `127.0.0.1:${port}`,
    grpcCredentials.createSsl(
      Buffer.from(ca.cert),
      Buffer.from(client.key),
      Buffer.from(client.cert),
    ),
  );
  const metadata = new Metadata();
  metadata.set("authorization", `Bearer ${token}`);
  return new Promise<HeartbeatResponse>((resolve, reject) => {
    const call = grpc.makeClientStreamRequest<
      HeartbeatRequest,
      HeartbeatResponse
    >(
      HEARTBEAT_PATH,
      (message) => Buffer.from(toBinary(HeartbeatRequestSchema, message)),
      (bytes) => fromBinary(HeartbeatResponseSchema, bytes),
      metadata,
      (error, value) => (error ? reject(error) : resolve(value!)),
    );
    call.write(create(HeartbeatRequestSchema, request));
    call.end();
  }).finally(() => grpc.close());
}

/** The ALPN protocol a TLS handshake offering `protocols` settles on. */
function negotiatedProtocol(
  port: number,
  protocols: string[],
): Promise<string | false> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect(
      { host: "127.0.0.1", port, ca: ca.cert, ALPNProtocols: protocols },
      () => {
        resolve(socket.alpnProtocol ?? false);
        socket.end();
      },
    );
    socket.once("error", reject);
  });
}

/** The ConnectError a call fails with; fails the test if it succeeds. */
async function failureOf(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (error) {
    return ConnectError.from(error);
  }
  throw new Error("the call succeeded");
}

async function acceptOne(client: TestServer["grpc"], prefix: string) {
  const name = deckyName(prefix);
  const { rows } = await client.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: name }],
  });
  return { name, row: rows[0]! };
}

describe("TLS settings", () => {
  function settingsErrorOf(env: Record<string, string>): string {
    try {
      loadSettings(env);
    } catch (error) {
      if (error instanceof SettingsError) return error.message;
      throw error;
    }
    throw new Error(`loadSettings accepted ${JSON.stringify(env)}`);
  }

  test("loadSettings reads the certificate, the key and the client CA into the settings", () => {
    const settings = loadSettings({
      TLS_CERT_FILE: serverPair.certFile,
      TLS_KEY_FILE: serverPair.keyFile,
      TLS_CLIENT_CA_FILE: ca.certFile,
    });

    expect(settings.tls).toEqual({
      cert: Buffer.from(serverPair.cert),
      key: Buffer.from(serverPair.key),
      clientCa: Buffer.from(ca.cert),
    });
  });

  test("loadSettings refuses a certificate without a key, naming both settings", () => {
    expect(settingsErrorOf({ TLS_CERT_FILE: serverPair.certFile })).toBe(
      "invalid settings: TLS_CERT_FILE is set without TLS_KEY_FILE: set both TLS_CERT_FILE and TLS_KEY_FILE to serve TLS, or neither",
    );
  });

  test("loadSettings refuses a key without a certificate, naming both settings", () => {
    expect(settingsErrorOf({ TLS_KEY_FILE: serverPair.keyFile })).toBe(
      "invalid settings: TLS_KEY_FILE is set without TLS_CERT_FILE: set both TLS_CERT_FILE and TLS_KEY_FILE to serve TLS, or neither",
    );
  });

  test("loadSettings refuses a client CA without a certificate and key", () => {
    expect(settingsErrorOf({ TLS_CLIENT_CA_FILE: ca.certFile })).toBe(
      "invalid settings: TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE: mutual TLS is served over TLS",
    );
  });

  test("loadSettings names the setting whose file cannot be read", () => {
    const missing = join(tmpdir(), "dl-no-such-dir", "server.key");

    expect(
      settingsErrorOf({
        TLS_CERT_FILE: serverPair.certFile,
        TLS_KEY_FILE: missing,
      }),
    ).toBe(
      `invalid settings: TLS_KEY_FILE=${JSON.stringify(missing)} cannot be read: no such file`,
    );
  });

  test("loadSettings refuses a key that does not belong to the certificate", () => {
    expect(
      settingsErrorOf({
        TLS_CERT_FILE: serverPair.certFile,
        TLS_KEY_FILE: workerPair.keyFile,
      }),
    ).toBe(
      "invalid settings: TLS_CERT_FILE and TLS_KEY_FILE do not hold a PEM certificate and its private key (key values mismatch)",
    );
  });

  test("loadSettings refuses a client CA file that holds no certificate", () => {
    expect(
      settingsErrorOf({
        TLS_CERT_FILE: serverPair.certFile,
        TLS_KEY_FILE: serverPair.keyFile,
        TLS_CLIENT_CA_FILE: serverPair.keyFile,
      }),
    ).toBe(
      "invalid settings: TLS_CLIENT_CA_FILE does not hold a PEM certificate (no start line)",
    );
  });
});

describe("over TLS", () => {
  let server: TestServer;
  let pageServer: PageServer;
  let browser: Browser | undefined;

  beforeAll(async () => {
    // A browser page on another origin, let in by CORS.
    pageServer = await servePage(await bundlePageScript("api-client"));
    server = await startTestServer(database, {
      TLS_CERT_FILE: serverPair.certFile,
      TLS_KEY_FILE: serverPair.keyFile,
      CORS_ALLOWED_ORIGINS: pageServer.origin,
    });
  });

  afterAll(async () => {
    await browser?.close();
    await server?.close();
    await pageServer?.close();
  });

  test("the server's URL is https", () => {
    expect(server.url).toBe(`https://127.0.0.1:${server.server.port}`);
  });

  test("ALPN settles on h2 for a client that offers it, and on http/1.1 for one that offers only that", async () => {
    const { port } = server.server;

    expect(await negotiatedProtocol(port, ["h2", "http/1.1"])).toBe("h2");
    expect(await negotiatedProtocol(port, ["http/1.1"])).toBe("http/1.1");
  });

  test.each([
    "gRPC over HTTP/2",
    "Connect over HTTP/2",
    "Connect over HTTP/1.1",
    "gRPC-Web over HTTP/1.1",
  ])("%s accepts a deploy and lists it over TLS", async (protocol) => {
    const client = createClient(
      LifecycleService,
      transportsTo(server.url)[protocol]!,
    );

    const { name, row } = await acceptOne(client, "tls");
    const listed = await client.list({ deckyName: name });

    expect(listed.rows).toEqual([row]);
    expect(row.status).toBe(Status.PENDING);
  });

  test("grpc-js with ssl credentials lists a row over TLS", async () => {
    const connect = createClient(
      LifecycleService,
      transportsTo(server.url)["Connect over HTTP/1.1"]!,
    );
    const { name, row } = await acceptOne(connect, "grpc-js-tls");

    const listed = await grpcJsList(server.server.port, { deckyName: name });

    expect(listed.rows).toEqual([row]);
  });

  test("a client that speaks cleartext to the TLS port is hung up on", async () => {
    const cleartext = createClient(
      LifecycleService,
      createConnectTransport({
        baseUrl: `http://127.0.0.1:${server.server.port}`,
        httpVersion: "1.1",
      }),
    );

    const error = await failureOf(cleartext.list({}));

    expect([error.code, error.rawMessage]).toEqual([
      Code.Aborted,
      "socket hang up",
    ]);
  });

  test("Chromium calls List with Connect-Web over TLS and HTTP/2", async () => {
    const { name, row } = await acceptOne(
      createClient(
        LifecycleService,
        transportsTo(server.url)["gRPC over HTTP/2"]!,
      ),
      "browser-tls",
    );
    browser = await launchChromium();
    // The test CA is not in Chromium's store; the other tests here check
    // the certificate.
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    const page = await context.newPage();
    // What Chromium's network stack saw of each response from the service.
    const devtools = await context.newCDPSession(page);
    await devtools.send("Network.enable");
    const responses: string[] = [];
    devtools.on("Network.responseReceived", ({ type, response }) => {
      if (response.url.startsWith(server.url)) {
        responses.push(`${type} ${response.status} ${response.protocol}`);
      }
    });
    await page.goto(`${pageServer.origin}/?api=${server.url}`);
    await page.waitForFunction(() => "lifecycle" in window);

    const listed = await page.evaluate(
      (deckyName) =>
        (
          window as unknown as {
            lifecycle: { list(name: string): Promise<unknown> };
          }
        ).lifecycle.list(deckyName),
      name,
    );

    expect(listed).toEqual({
      ok: true,
      value: [{ id: row.id, deckyName: name, status: "PENDING" }],
    });
    expect(responses).toEqual(["Preflight 204 h2", "Fetch 200 h2"]);
  });
});

describe("over mutual TLS", () => {
  let server: TestServer;

  beforeAll(async () => {
    server = await startTestServer(database, {
      TLS_CERT_FILE: serverPair.certFile,
      TLS_KEY_FILE: serverPair.keyFile,
      TLS_CLIENT_CA_FILE: ca.certFile,
    });
  });

  afterAll(async () => {
    await server?.close();
  });

  test("grpc-js with a client certificate signed by the client CA lists a row", async () => {
    const connect = createClient(
      LifecycleService,
      transportsTo(server.url, workerPair)["Connect over HTTP/1.1"]!,
    );
    const { name, row } = await acceptOne(connect, "mtls");

    const listed = await grpcJsList(
      server.server.port,
      { deckyName: name },
      workerPair,
    );

    expect(listed.rows).toEqual([row]);
  });

  test.each([
    "gRPC over HTTP/2",
    "Connect over HTTP/2",
    "Connect over HTTP/1.1",
    "gRPC-Web over HTTP/1.1",
  ])("%s with a client certificate lists rows", async (protocol) => {
    const client = createClient(
      LifecycleService,
      transportsTo(server.url, workerPair)[protocol]!,
    );

    const { name, row } = await acceptOne(client, "mtls");
    const listed = await client.list({ deckyName: name });

    expect(listed.rows).toEqual([row]);
  });

  test("grpc-js without a client certificate is refused at the handshake: UNAVAILABLE", async () => {
    const error = await grpcJsList(server.server.port, {}).then(
      () => undefined,
      (thrown: ServiceError) => thrown,
    );

    expect(error?.code).toBe(grpcStatus.UNAVAILABLE);
  });

  test("grpc-js with a client certificate from another CA is refused at the handshake: UNAVAILABLE", async () => {
    const error = await grpcJsList(server.server.port, {}, strangerPair).then(
      () => undefined,
      (thrown: ServiceError) => thrown,
    );

    expect(error?.code).toBe(grpcStatus.UNAVAILABLE);
  });

  test.each(["gRPC over HTTP/2", "Connect over HTTP/1.1"])(
    "%s without a client certificate is refused with the TLS alert certificate required",
    async (protocol) => {
      const client = createClient(
        LifecycleService,
        transportsTo(server.url)[protocol]!,
      );

      const error = await failureOf(client.list({}));

      expect(error.code).toBe(Code.Internal);
      expect(error.rawMessage).toMatch(/:tlsv13 alert certificate required:/);
    },
  );
});

describe("over mutual TLS with tokens: a worker's certificate pinned to its host", () => {
  let server: TestServer;
  let admin: CallerClients;

  beforeAll(async () => {
    server = await startTestServer(database, {
      TLS_CERT_FILE: serverPair.certFile,
      TLS_KEY_FILE: serverPair.keyFile,
      TLS_CLIENT_CA_FILE: ca.certFile,
      AUTH: "tokens",
    });
    // Under mutual TLS every caller presents a certificate; only a worker's
    // is checked against its host.
    const adminPair = await ca.issueClient("operator-console");
    const transport = createGrpcTransport({
      baseUrl: server.url,
      nodeOptions: { ca: ca.cert, cert: adminPair.cert, key: adminPair.key },
      interceptors: [
        authorizationHeader(
          `Bearer ${await storeToken(server.server, "admin")}`,
        ),
      ],
    });
    admin = {
      lifecycle: createClient(LifecycleService, transport),
      hosts: createClient(HostService, transport),
      tokens: createClient(TokenService, transport),
    };
  });

  afterAll(async () => {
    await server?.close();
  });

  /**
   * Enrols a host with a new client certificate's fingerprint, as openssl
   * prints it, and accepts a deploy on it.
   */
  async function enrolWorker(name: string) {
    const pinned = await ca.issueClient(name);
    const { host, token } = await admin.hosts.enrollHost({
      name,
      certificateFingerprint: pinned.fingerprint,
    });
    const { rows } = await admin.lifecycle.accept({
      operation: Operation.DEPLOY,
      targets: [{ deckyName: deckyName(name), hostUuid: host!.hostUuid }],
    });
    return { hostUuid: host!.hostUuid, token, pinned, row: rows[0]! };
  }

  test("grpc-js with the pinned certificate and the host's token moves the host's row", async () => {
    const worker = await enrolWorker("pinned-1");

    const response = await grpcJsHeartbeat(
      server.server.port,
      worker.pinned,
      worker.token,
      {
        hostUuid: worker.hostUuid,
        agentVersion: "1.4.2",
        deltas: [
          {
            deckyName: worker.row.deckyName,
            operation: Operation.DEPLOY,
            status: Status.RUNNING,
          },
        ],
      },
    );
    const { rows } = await admin.lifecycle.list({ ids: [worker.row.id] });

    expect([response.messages, response.applied, response.outcomes]).toEqual([
      1,
      1,
      [],
    ]);
    expect(rows.map((row) => Status[row.status])).toEqual(["RUNNING"]);
  });

  test("grpc-js with a certificate of the same CA that is not pinned to the host is refused with PERMISSION_DENIED, and nothing changes", async () => {
    const worker = await enrolWorker("pinned-2");
    const unpinned = await ca.issueClient("pinned-2");

    const error = await grpcJsHeartbeat(
      server.server.port,
      unpinned,
      worker.token,
      {
        hostUuid: worker.hostUuid,
        agentVersion: "1.4.2",
        deltas: [
          {
            deckyName: worker.row.deckyName,
            operation: Operation.DEPLOY,
            status: Status.RUNNING,
          },
        ],
      },
    ).then(
      () => undefined,
      (thrown: ServiceError) => thrown,
    );
    const { rows } = await admin.lifecycle.list({ ids: [worker.row.id] });

    expect([error?.code, error?.details]).toEqual([
      grpcStatus.PERMISSION_DENIED,
      `the client certificate is not the one pinned to host ${worker.hostUuid}`,
    ]);
    expect(rows).toEqual([worker.row]);
  });
});

describe("the server process", () => {
  const dataDirs: string[] = [];

  afterAll(async () => {
    for (const dir of dataDirs) await rm(dir, { recursive: true, force: true });
  });

  async function newDataDir(): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), "dl-tls-"));
    dataDirs.push(dir);
    return dir;
  }

  test.each([
    ["no TLS", "off"],
    ["server-only TLS", "server"],
    ["mutual TLS", "mutual"],
  ] as const)(
    "refuses to listen on 0.0.0.0 with AUTH=none and %s, exiting with status 2 and one plain line saying how to fix it",
    async (_, tls) => {
      const server = spawnServer({
        DATA_DIR: await newDataDir(),
        HOST: "0.0.0.0",
        PORT: "0",
        AUTH: "none",
        ...(tls === "off"
          ? {}
          : {
              TLS_CERT_FILE: serverPair.certFile,
              TLS_KEY_FILE: serverPair.keyFile,
            }),
        ...(tls === "mutual" ? { TLS_CLIENT_CA_FILE: ca.certFile } : {}),
      });
      const exit = await server.exited;

      expect(exit).toEqual({ code: 2, signal: null });
      expect(server.log.map((line) => [line.level, line.msg])).toEqual([
        [
          60,
          `refusing to listen on 0.0.0.0 with AUTH=none: every caller that reaches it would act as an admin, and TLS, even mutual TLS, encrypts the calls but does not say who is calling. Set AUTH=tokens (create the first admin token with "npm run cli -- token create --role admin --name <name>"), or listen on 127.0.0.1 (HOST=127.0.0.1)`,
        ],
      ]);
      expect(server.stderr()).toBe("");
    },
    PROCESS_TIMEOUT_MS,
  );

  test(
    "logs each failed TLS handshake with its reason, and the client's address while the connection has it, and goes on serving",
    async () => {
      const server = spawnServer({
        DATA_DIR: await newDataDir(),
        PORT: "0",
        AUTH: "none",
        TLS_CERT_FILE: serverPair.certFile,
        TLS_KEY_FILE: serverPair.keyFile,
        TLS_CLIENT_CA_FILE: ca.certFile,
      });
      try {
        const url = new URL(await server.servingUrl());
        const port = Number(url.port);
        const withoutCertificate = await handshakeRefusal(port);
        await handshakeRefusal(port, strangerPair);
        await waitFor(() => failedHandshakes(server.log).length === 2);
        const listed = await grpcJsList(
          port,
          { deckyName: deckyName("after-refusals") },
          workerPair,
        );

        expect(failedHandshakes(server.log)).toEqual([
          {
            level: 40,
            msg: "TLS handshake failed",
            peer: `127.0.0.1 ${withoutCertificate}`,
            reason: "peer did not return a certificate",
          },
          {
            level: 40,
            msg: "TLS handshake failed",
            peer: undefined,
            reason: "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
          },
        ]);
        expect(listed.rows).toEqual([]);
      } finally {
        await stopProcess(server.child);
      }
    },
    PROCESS_TIMEOUT_MS,
  );

  test(
    "exits with status 2 and one plain line, no stack, when a TLS file cannot be read",
    async () => {
      const missing = join(await newDataDir(), "server.crt");
      const server = spawnServer({
        DATA_DIR: await newDataDir(),
        PORT: "0",
        TLS_CERT_FILE: missing,
        TLS_KEY_FILE: serverPair.keyFile,
      });
      const exit = await server.exited;

      expect(exit).toEqual({ code: 2, signal: null });
      expect(server.log.map((line) => [line.level, line.msg])).toEqual([
        [
          60,
          `invalid settings: TLS_CERT_FILE=${JSON.stringify(missing)} cannot be read: no such file`,
        ],
      ]);
      expect(server.log.some((line) => "err" in line)).toBe(false);
      expect(server.stderr()).toBe("");
    },
    PROCESS_TIMEOUT_MS,
  );
});

/**
 * Opens a TLS connection to `port` that the server refuses, with `client`'s
 * certificate or none, and resolves with its local port once it has ended.
 */
async function handshakeRefusal(port: number, client?: KeyPair) {
  const socket = tls.connect({
    host: "127.0.0.1",
    port,
    ca: ca.cert,
    servername: "localhost",
    ALPNProtocols: ["h2"],
    ...(client ? { cert: client.cert, key: client.key } : {}),
  });
  let localPort: number | undefined;
  socket.once("connect", () => {
    localPort = socket.localPort;
  });
  socket.on("error", () => {});
  socket.resume();
  await new Promise((resolve) => socket.once("close", resolve));
  return localPort;
}

function failedHandshakes(log: readonly LogLine[]) {
  return log
    .filter((line) => line.msg === "TLS handshake failed")
    .map(({ level, msg, peer, reason }) => ({ level, msg, peer, reason }));
}

async function waitFor(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((resolve) => setTimeout(resolve, 20));
}
