import { describe, expect, it } from "vitest";
import {
  type Delta,
  type DeltaInput,
  decideDelta,
  validateDelta,
} from "../../src/domain/delta.js";
import type { LifecycleRow } from "../../src/domain/lifecycle.js";

const HOST = "6f1c1a52-3d2b-4f8e-9a57-0c4d2e8b1f00";
const OTHER_HOST = "0b8e7f64-1c2d-4e3f-8a9b-5c6d7e8f9a0b";
const ROW_ID = "3e5a9c1d-7b2f-4d6e-8c0a-1f2e3d4c5b6a";

/** A valid RUNNING delta for decky `web-1`, overridden field by field. */
function input(overrides: Partial<DeltaInput> = {}): DeltaInput {
  return {
    deckyName: "web-1",
    operation: "deploy",
    status: "running",
    error: undefined,
    completedAt: undefined,
    lifecycleId: undefined,
    ...overrides,
  };
}

function delta(overrides: Partial<Delta> = {}): Delta {
  return {
    deckyName: "web-1",
    operation: "deploy",
    status: "running",
    error: null,
    completedAt: null,
    lifecycleId: null,
    ...overrides,
  };
}

function row(overrides: Partial<LifecycleRow> = {}): LifecycleRow {
  return {
    id: ROW_ID,
    deckyName: "web-1",
    hostUuid: HOST,
    operation: "deploy",
    status: "pending",
    error: null,
    startedAt: new Date("2026-12-03T10:00:00.000Z"),
    updatedAt: new Date("2026-12-03T10:00:00.000Z"),
    completedAt: null,
    revision: 7n,
    ...overrides,
  };
}

describe("validateDelta", () => {
  it("turns a valid delta with every field set into a Delta", () => {
    const completedAt = new Date("2026-12-03T10:05:00.000Z");

    const result = validateDelta(
      input({
        operation: "mutate",
        status: "failed",
        error: "disk full",
        completedAt,
        lifecycleId: ROW_ID,
      }),
    );

    expect(result).toEqual({
      deckyName: "web-1",
      operation: "mutate",
      status: "failed",
      error: "disk full",
      completedAt,
      lifecycleId: ROW_ID,
    });
  });

  it("turns unset optional fields into nulls", () => {
    expect(validateDelta(input({ status: "succeeded" }))).toEqual({
      deckyName: "web-1",
      operation: "deploy",
      status: "succeeded",
      error: null,
      completedAt: null,
      lifecycleId: null,
    });
  });

  it("lower-cases lifecycle_id", () => {
    const result = validateDelta(input({ lifecycleId: ROW_ID.toUpperCase() }));

    expect(result).toEqual(delta({ lifecycleId: ROW_ID }));
  });

  it("cuts error text to 2000 code points", () => {
    const result = validateDelta(
      input({ status: "failed", error: "😀".repeat(2001) }),
    );

    expect(result).toEqual(
      delta({ status: "failed", error: "😀".repeat(2000) }),
    );
  });

  it("keeps error text of exactly 2000 code points whole", () => {
    const result = validateDelta(
      input({ status: "failed", error: "x".repeat(2000) }),
    );

    expect(result).toEqual(
      delta({ status: "failed", error: "x".repeat(2000) }),
    );
  });

  it("keeps an empty error text on a FAILED delta", () => {
    expect(validateDelta(input({ status: "failed", error: "" }))).toEqual(
      delta({ status: "failed", error: "" }),
    );
  });

  it("rejects a decky name that does not match the pattern", () => {
    expect(validateDelta(input({ deckyName: "Web_1" }))).toBe(
      'decky_name "Web_1" must match ^[a-z0-9-]{1,64}$',
    );
  });

  it("rejects an empty decky name", () => {
    expect(validateDelta(input({ deckyName: "" }))).toBe(
      'decky_name "" must match ^[a-z0-9-]{1,64}$',
    );
  });

  it("quotes at most 80 characters of a rejected decky name", () => {
    expect(validateDelta(input({ deckyName: "a".repeat(65) }))).toBe(
      `decky_name "${"a".repeat(65)}" must match ^[a-z0-9-]{1,64}$`,
    );
    expect(validateDelta(input({ deckyName: "A".repeat(100) }))).toBe(
      `decky_name "${"A".repeat(80)}" must match ^[a-z0-9-]{1,64}$`,
    );
  });

  it("rejects a delta without an operation", () => {
    expect(validateDelta(input({ operation: undefined }))).toBe(
      "operation must be OPERATION_DEPLOY or OPERATION_MUTATE",
    );
  });

  it("rejects a delta without a status", () => {
    expect(validateDelta(input({ status: undefined }))).toBe(
      "status must be STATUS_RUNNING, STATUS_SUCCEEDED or STATUS_FAILED",
    );
  });

  it("rejects a PENDING delta", () => {
    expect(validateDelta(input({ status: "pending" }))).toBe(
      "status must be STATUS_RUNNING, STATUS_SUCCEEDED or STATUS_FAILED",
    );
  });

  it("rejects error text on a RUNNING or SUCCEEDED delta", () => {
    expect(validateDelta(input({ status: "running", error: "x" }))).toBe(
      "error may be set only with STATUS_FAILED",
    );
    expect(validateDelta(input({ status: "succeeded", error: "" }))).toBe(
      "error may be set only with STATUS_FAILED",
    );
  });

  it("rejects error text with a NUL character", () => {
    expect(validateDelta(input({ status: "failed", error: "a\0b" }))).toBe(
      "error must not contain NUL characters",
    );
  });

  it("rejects a lifecycle_id that is not a UUID, quoting 80 characters", () => {
    expect(validateDelta(input({ lifecycleId: "row-1" }))).toBe(
      'lifecycle_id "row-1" is not a UUID',
    );
    expect(validateDelta(input({ lifecycleId: "" }))).toBe(
      'lifecycle_id "" is not a UUID',
    );
    expect(validateDelta(input({ lifecycleId: "z".repeat(90) }))).toBe(
      `lifecycle_id "${"z".repeat(80)}" is not a UUID`,
    );
  });

  it("rejects a completed_at that is not a valid time", () => {
    expect(
      validateDelta(
        input({ status: "succeeded", completedAt: new Date(Number.NaN) }),
      ),
    ).toBe("completed_at must be a time from 0001-01-01 to 9999-12-31 UTC");
  });

  it("rejects a completed_at outside the range of a Timestamp", () => {
    const past9999 = new Date("+010000-01-01T00:00:00.000Z");
    const before0001 = new Date("0000-12-31T23:59:59.999Z");

    expect(
      validateDelta(input({ status: "succeeded", completedAt: past9999 })),
    ).toBe("completed_at must be a time from 0001-01-01 to 9999-12-31 UTC");
    expect(
      validateDelta(input({ status: "succeeded", completedAt: before0001 })),
    ).toBe("completed_at must be a time from 0001-01-01 to 9999-12-31 UTC");
  });

  it("keeps a completed_at at either end of the range of a Timestamp", () => {
    const first = new Date("0001-01-01T00:00:00.000Z");
    const last = new Date("9999-12-31T23:59:59.999Z");

    expect(
      validateDelta(input({ status: "succeeded", completedAt: first })),
    ).toEqual(delta({ status: "succeeded", completedAt: first }));
    expect(
      validateDelta(input({ status: "succeeded", completedAt: last })),
    ).toEqual(delta({ status: "succeeded", completedAt: last }));
  });

  it("reports the first problem in field order", () => {
    expect(
      validateDelta({
        deckyName: "Bad",
        operation: undefined,
        status: "pending",
        error: "\0",
        completedAt: new Date(Number.NaN),
        lifecycleId: "nope",
      }),
    ).toBe('decky_name "Bad" must match ^[a-z0-9-]{1,64}$');
    expect(
      validateDelta(
        input({ status: "running", error: "\0", lifecycleId: "nope" }),
      ),
    ).toBe("error may be set only with STATUS_FAILED");
    expect(
      validateDelta(
        input({ status: "failed", error: "ok", lifecycleId: "nope" }),
      ),
    ).toBe('lifecycle_id "nope" is not a UUID');
  });
});

describe("decideDelta", () => {
  it("applies a RUNNING delta to a PENDING row of the host", () => {
    expect(decideDelta(delta(), row(), HOST)).toEqual({ result: "apply" });
  });

  it("applies a terminal delta to a RUNNING row", () => {
    expect(
      decideDelta(
        delta({ status: "failed", error: "boom" }),
        row({ status: "running" }),
        HOST,
      ),
    ).toEqual({ result: "apply" });
  });

  it("applies a terminal delta to a PENDING row", () => {
    expect(decideDelta(delta({ status: "succeeded" }), row(), HOST)).toEqual({
      result: "apply",
    });
  });

  it("applies a completed_at equal to the row's started_at", () => {
    const completedAt = new Date("2026-12-03T10:00:00.000Z");

    expect(
      decideDelta(delta({ status: "succeeded", completedAt }), row(), HOST),
    ).toEqual({ result: "apply" });
  });

  it("finds no open row when the host has none for the decky and operation", () => {
    expect(decideDelta(delta(), undefined, HOST)).toEqual({
      result: "no_open_row",
      detail: `host ${HOST} has no open deploy row for decky web-1`,
    });
  });

  it("finds no open row when the named lifecycle row does not exist", () => {
    expect(
      decideDelta(delta({ lifecycleId: ROW_ID }), undefined, HOST),
    ).toEqual({
      result: "no_open_row",
      detail: `lifecycle row ${ROW_ID} does not exist`,
    });
  });

  it("rejects a row of another host", () => {
    expect(
      decideDelta(
        delta({ lifecycleId: ROW_ID }),
        row({ hostUuid: OTHER_HOST }),
        HOST,
      ),
    ).toEqual({
      result: "rejected",
      detail: `lifecycle row ${ROW_ID} does not belong to host ${HOST}`,
    });
  });

  it("rejects a master-resident row", () => {
    expect(
      decideDelta(
        delta({ lifecycleId: ROW_ID }),
        row({ hostUuid: null }),
        HOST,
      ),
    ).toEqual({
      result: "rejected",
      detail: `lifecycle row ${ROW_ID} does not belong to host ${HOST}`,
    });
  });

  it("rejects a foreign row before looking at its status", () => {
    expect(
      decideDelta(
        delta({ lifecycleId: ROW_ID, status: "succeeded" }),
        row({ hostUuid: OTHER_HOST, status: "succeeded" }),
        HOST,
      ),
    ).toEqual({
      result: "rejected",
      detail: `lifecycle row ${ROW_ID} does not belong to host ${HOST}`,
    });
  });

  it("rejects a named row of another decky", () => {
    expect(
      decideDelta(
        delta({ lifecycleId: ROW_ID }),
        row({ deckyName: "web-2" }),
        HOST,
      ),
    ).toEqual({
      result: "rejected",
      detail: `lifecycle row ${ROW_ID} is deploy of decky web-2, not deploy of web-1`,
    });
  });

  it("rejects a named row of another operation", () => {
    expect(
      decideDelta(
        delta({ lifecycleId: ROW_ID }),
        row({ operation: "mutate" }),
        HOST,
      ),
    ).toEqual({
      result: "rejected",
      detail: `lifecycle row ${ROW_ID} is mutate of decky web-1, not deploy of web-1`,
    });
  });

  it("calls the same terminal status on a terminal row a duplicate", () => {
    expect(
      decideDelta(
        delta({ status: "succeeded" }),
        row({ status: "succeeded" }),
        HOST,
      ),
    ).toEqual({
      result: "duplicate",
      detail: `lifecycle row ${ROW_ID} is already succeeded`,
    });
  });

  it("calls a replayed FAILED a duplicate whatever its error text", () => {
    expect(
      decideDelta(
        delta({ status: "failed", error: "other text" }),
        row({ status: "failed", error: "boom" }),
        HOST,
      ),
    ).toEqual({
      result: "duplicate",
      detail: `lifecycle row ${ROW_ID} is already failed`,
    });
  });

  it("refuses a different status on a terminal row", () => {
    expect(
      decideDelta(
        delta({ status: "failed", error: "late" }),
        row({ status: "succeeded" }),
        HOST,
      ),
    ).toEqual({
      result: "already_terminal",
      detail: `lifecycle row ${ROW_ID} is succeeded and cannot become failed`,
    });
    expect(decideDelta(delta(), row({ status: "failed" }), HOST)).toEqual({
      result: "already_terminal",
      detail: `lifecycle row ${ROW_ID} is failed and cannot become running`,
    });
  });

  it("checks a terminal row before a stale completed_at", () => {
    const completedAt = new Date("2026-12-03T09:00:00.000Z");

    expect(
      decideDelta(
        delta({ status: "succeeded", completedAt }),
        row({ status: "succeeded" }),
        HOST,
      ),
    ).toEqual({
      result: "duplicate",
      detail: `lifecycle row ${ROW_ID} is already succeeded`,
    });
  });

  it("calls a completed_at before the row started stale", () => {
    const completedAt = new Date("2026-12-03T09:59:59.999Z");

    expect(
      decideDelta(
        delta({ status: "succeeded", completedAt }),
        row({ status: "running" }),
        HOST,
      ),
    ).toEqual({
      result: "stale",
      detail: `completed_at 2026-12-03T09:59:59.999Z is before lifecycle row ${ROW_ID} started at 2026-12-03T10:00:00.000Z`,
    });
  });

  it("calls RUNNING on a RUNNING row a duplicate", () => {
    expect(decideDelta(delta(), row({ status: "running" }), HOST)).toEqual({
      result: "duplicate",
      detail: `lifecycle row ${ROW_ID} is already running`,
    });
  });
});
