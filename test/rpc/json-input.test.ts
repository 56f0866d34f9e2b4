import { expect, test } from "vitest";
import { deckyName, serveThisFile } from "../support/test-server.js";

const server = serveThisFile();

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
