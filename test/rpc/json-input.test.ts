import { Code } from "@connectrpc/connect";
import { afterAll, expect, test } from "vitest";
import { closeRawSessions, envelope, rawCall } from "../support/raw-rpc.js";
import { deckyName, serveThisFile } from "../support/test-server.js";

const server = serveThisFile();
afterAll(closeRawSessions);

/** Calls a unary method with a Connect JSON body, as a browser or curl does. */
async function callJson(method: string, body: string) {
  const response = await fetch(
    `${server.url}/decky.lifecycle.v1.LifecycleService/${method}`,
    {
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
    },
  );
  return { status: response.status, body: await response.json() };
}

test("Accept refuses a misspelt field rather than dropping it, and writes nothing", async () => {
  const name = deckyName();

  const answer = await callJson(
    "Accept",
    JSON.stringify({
      operation: "OPERATION_DEPLOY",
      targets: [
        { deckyName: name, hostUUID: "6f1c2a7e-4b1d-4c3e-9a51-2f0d8e7b9c10" },
      ],
    }),
  );

  expect(answer).toEqual({
    status: 400,
    body: {
      code: "invalid_argument",
      message:
        'cannot decode message decky.lifecycle.v1.Target from JSON: key "hostUUID" is unknown',
    },
  });
  expect((await server.grpc.list({ deckyName: name })).rows).toEqual([]);
});

test("List refuses a misspelt status name rather than matching every row", async () => {
  const answer = await callJson(
    "List",
    JSON.stringify({ statuses: ["STATUS_NOPE"] }),
  );

  expect(answer.status).toBe(400);
  expect(answer.body.code).toBe("invalid_argument");
  expect(answer.body.message).toContain("STATUS_NOPE");
});

test("Accept refuses a body that is not JSON", async () => {
  const answer = await callJson("Accept", "{bad");

  expect(answer.status).toBe(400);
  expect(answer.body.code).toBe("invalid_argument");
  expect(answer.body.message).toContain(
    "cannot decode message decky.lifecycle.v1.AcceptRequest from JSON",
  );
});

test("Accept refuses a JSON body that is not UTF-8, and writes nothing", async () => {
  const name = deckyName();
  const body = Buffer.concat([
    Buffer.from(
      `{"operation":"OPERATION_DEPLOY","targets":[{"deckyName":"${name}"}],"requestId":"`,
    ),
    Buffer.from([0xff, 0xfe]),
    Buffer.from('"}'),
  ]);

  const answer = await rawCall(server.url, "connect-json", "Accept", body);

  expect([answer.httpStatus, answer.code, answer.message]).toEqual([
    400,
    Code.InvalidArgument,
    "cannot decode message decky.lifecycle.v1.AcceptRequest from JSON: the body is not valid UTF-8",
  ]);
  expect((await server.grpc.list({ deckyName: name })).rows).toEqual([]);
});

test("Accept refuses a JSON string with an unpaired surrogate, naming the field, and writes nothing", async () => {
  const name = deckyName();

  const answer = await callJson(
    "Accept",
    `{"operation":"OPERATION_DEPLOY","targets":[{"deckyName":"${name}"}],"requestId":"key-\\ud800"}`,
  );

  expect(answer).toEqual({
    status: 400,
    body: {
      code: "invalid_argument",
      message:
        "cannot decode message decky.lifecycle.v1.AcceptRequest from JSON: requestId holds an unpaired UTF-16 surrogate",
    },
  });
  expect((await server.grpc.list({ deckyName: name })).rows).toEqual([]);
});

test("a JSON string with a surrogate pair is a character like any other", async () => {
  const name = deckyName();

  const answer = await callJson(
    "Accept",
    `{"operation":"OPERATION_DEPLOY","targets":[{"deckyName":"${name}"}],"requestId":"key-\\ud83d\\ude42"}`,
  );

  expect(answer.status).toBe(200);
  expect(answer.body.rows[0].deckyName).toBe(name);
});

test("Report refuses a JSON error text with an unpaired surrogate, naming the field", async () => {
  const answer = await callJson(
    "Report",
    '{"lifecycleId":"6f1c2a7e-4b1d-4c3e-9a51-2f0d8e7b9c10","status":"STATUS_FAILED","error":"\\udc00 lost"}',
  );

  expect(answer).toEqual({
    status: 400,
    body: {
      code: "invalid_argument",
      message:
        "cannot decode message decky.lifecycle.v1.ReportRequest from JSON: error holds an unpaired UTF-16 surrogate",
    },
  });
});

test("Accept refuses an operation number the contract does not define, sent as JSON", async () => {
  const name = deckyName();

  const answer = await callJson(
    "Accept",
    JSON.stringify({ operation: 7, targets: [{ deckyName: name }] }),
  );

  expect(answer).toEqual({
    status: 400,
    body: {
      code: "invalid_argument",
      message: "operation must be OPERATION_DEPLOY or OPERATION_MUTATE, not 7",
    },
  });
  expect((await server.grpc.list({ deckyName: name })).rows).toEqual([]);
});

test("Accept refuses a NUL escaped in a JSON request_id", async () => {
  const name = deckyName();

  const answer = await callJson(
    "Accept",
    `{"operation":"OPERATION_DEPLOY","targets":[{"deckyName":"${name}"}],"requestId":"a\\u0000b"}`,
  );

  expect(answer).toEqual({
    status: 400,
    body: {
      code: "invalid_argument",
      message: "request_id must not contain NUL characters",
    },
  });
  expect((await server.grpc.list({ deckyName: name })).rows).toEqual([]);
});

test("Watch over Connect streaming JSON refuses a message that is not JSON", async () => {
  const answer = await rawCall(
    server.url,
    "connect-stream-json",
    "Watch",
    envelope(Buffer.from('{"deckyName": ')),
  );

  expect(answer.code).toBe(Code.InvalidArgument);
  expect(answer.message).toMatch(
    /^cannot decode message decky\.lifecycle\.v1\.WatchRequest from JSON: /,
  );
});
