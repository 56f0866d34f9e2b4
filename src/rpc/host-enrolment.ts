import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  DecommissionHostResponseSchema,
  EnrollHostResponseSchema,
  type HostService,
  RotateHostTokenResponseSchema,
} from "../../gen/decky/lifecycle/v1/host_pb.js";
import {
  decommissionedError,
  rotatedTokenError,
} from "../auth/authenticate.js";
import { issueToken } from "../auth/token.js";
import {
  decommissionHost,
  enrolHost,
  rotateHostToken,
} from "../storage/host-enrolment.js";
import { inWriteTransaction } from "../storage/write-transaction.js";
import { toHostMessage } from "./host-convert.js";
import { checkText, invalidArgument } from "./invalid.js";
import { callEntityManager, type Services } from "./services.js";
import { checkUuid } from "./validate.js";

const MAX_HOST_NAME_LENGTH = 128;

/** A name people recognise something by: 1 to 128 characters. */
export function checkName(field: string, value: string): string {
  if (value.trim() === "") {
    throw invalidArgument(`${field} must not be empty`);
  }
  checkText(field, value, MAX_HOST_NAME_LENGTH);
  return value;
}

/**
 * A certificate fingerprint as lower-case hex: SHA-256, 64 hex digits, with
 * or without colons between the bytes.
 */
export function checkFingerprint(field: string, value: string): string {
  const hex = value.replaceAll(":", "").toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(hex)) {
    throw invalidArgument(
      `${field} must be a SHA-256 fingerprint: 64 hex digits, colons allowed`,
    );
  }
  return hex;
}

/**
 * HostService's enrolment handlers: EnrollHost, RotateHostToken and
 * DecommissionHost. Each token they return is shown this once; only its
 * hash is stored.
 */
export function hostEnrolmentHandlers(
  services: Services,
): Pick<
  ServiceImpl<typeof HostService>,
  "enrollHost" | "rotateHostToken" | "decommissionHost"
> {
  const { feed, streams } = services;
  return {
    async enrollHost(request, context) {
      const enrolment = {
        name: checkName("name", request.name),
        hostUuid:
          request.hostUuid === undefined
            ? randomUUID()
            : checkUuid("host_uuid", request.hostUuid),
        certificateFingerprint:
          request.certificateFingerprint === undefined
            ? null
            : checkFingerprint(
                "certificate_fingerprint",
                request.certificateFingerprint,
              ),
      };
      const issued = issueToken();
      const { host } = await enrolHost(
        callEntityManager(context),
        enrolment,
        issued,
      );
      return create(EnrollHostResponseSchema, {
        host: toHostMessage(host),
        token: issued.text,
      });
    },

    async rotateHostToken(request, context) {
      const hostUuid = checkUuid("host_uuid", request.hostUuid);
      const issued = issueToken();
      const { host, revokedTokenIds } = await rotateHostToken(
        callEntityManager(context),
        hostUuid,
        issued,
      );
      streams.endTokens(revokedTokenIds, rotatedTokenError(hostUuid));
      return create(RotateHostTokenResponseSchema, {
        host: toHostMessage(host),
        token: issued.text,
      });
    },

    async decommissionHost(request, context) {
      const hostUuid = checkUuid("host_uuid", request.hostUuid);
      const { result, changes } = await inWriteTransaction(
        callEntityManager(context),
        (tx) => decommissionHost(tx, hostUuid),
      );
      feed.publish(changes);
      streams.endHost(hostUuid, decommissionedError(hostUuid));
      return create(DecommissionHostResponseSchema, {
        host: toHostMessage(result.host),
        failedRows: result.failedRows.length,
      });
    },
  };
}
