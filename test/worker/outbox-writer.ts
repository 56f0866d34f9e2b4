/**
 * Writes to an outbox until it is killed, for the outbox crash test: adds a
 * FAILED delta for decky d-<n>, n = 1, 2, ..., and after every third add
 * removes the two before it. Prints "added <n>" or "removed <n> <m>" once
 * each change is on disk.
 */
import { create } from "@bufbuild/protobuf";
import {
  LifecycleDeltaSchema,
  Operation,
  Status,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { Outbox } from "../../src/worker/outbox.js";

const outbox = Outbox.open(process.argv[2]!);
for (let n = 1; ; n++) {
  const [entry] = outbox.add([
    create(LifecycleDeltaSchema, {
      deckyName: `d-${n}`,
      operation: Operation.MUTATE,
      status: Status.FAILED,
      error: `failure ${n} `.repeat(60),
    }),
  ]);
  process.stdout.write(`added ${entry!.seq}\n`);
  if (n % 3 === 0) {
    outbox.remove([n - 2, n - 1]);
    process.stdout.write(`removed ${n - 2} ${n - 1}\n`);
  }
}
