import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import {
  type ApiToken as ApiTokenMessage,
  ApiTokenSchema,
  CreateTokenResponseSchema,
  ListTokensResponseSchema,
  RevokeTokenResponseSchema,
  Role as RoleEnum,
  TokenService,
} from "../../gen/decky/lifecycle/v1/token_pb.js";
import { revokedTokenError } from "../auth/authenticate.js";
import type { Role } from "../auth/roles.js";
import { issueToken } from "../auth/token.js";
import { isUuid } from "../domain/lifecycle.js";
import {
  type ApiToken,
  insertToken,
  listTokens,
  revokeToken,
} from "../storage/api-tokens.js";
import { checkName } from "./host-enrolment.js";
import { invalidArgument } from "./invalid.js";
import { callEntityManager, type Services } from "./services.js";
import { checkUuid, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE } from "./validate.js";

const roleValues: Record<Role, RoleEnum> = {
  admin: RoleEnum.ADMIN,
  operator: RoleEnum.OPERATOR,
  viewer: RoleEnum.VIEWER,
  worker: RoleEnum.WORKER,
};

/** The role a token may be created with here; workers come from HostService. */
const creatableRoles = new Map<RoleEnum, Role>([
  [RoleEnum.ADMIN, "admin"],
  [RoleEnum.OPERATOR, "operator"],
  [RoleEnum.VIEWER, "viewer"],
]);

/** A stored token as the contract's message; never its secret. */
export function toApiTokenMessage(token: ApiToken): ApiTokenMessage {
  return create(ApiTokenSchema, {
    tokenId: token.id,
    name: token.name,
    role: roleValues[token.role],
    ...(token.hostUuid === null ? {} : { hostUuid: token.hostUuid }),
    createdAt: timestampFromDate(token.createdAt),
    ...(token.revokedAt === null
      ? {}
      : { revokedAt: timestampFromDate(token.revokedAt) }),
  });
}

/** The role of a CreateToken, or INVALID_ARGUMENT naming the field. */
export function checkCreatableRole(value: RoleEnum): Role {
  const role = creatableRoles.get(value);
  if (role) return role;
  if (value === RoleEnum.WORKER) {
    throw invalidArgument(
      "role ROLE_WORKER tokens come from EnrollHost and RotateHostToken, which bind them to a host",
    );
  }
  throw invalidArgument(
    `role must be ROLE_ADMIN, ROLE_OPERATOR or ROLE_VIEWER, not ${value}`,
  );
}

// A ListTokens page token is the id of the page's last token. It needs no
// signature: whoever may list tokens may read every page anyway.
function readPageToken(pageToken: string): string {
  const id = Buffer.from(pageToken, "base64url").toString();
  if (!isUuid(id) || Buffer.from(id).toString("base64url") !== pageToken) {
    throw invalidArgument("page_token is not a token this service issued");
  }
  return id;
}

/** Registers TokenService's handlers; only an admin reaches them. */
export function tokenRoutes(services: Services) {
  const { streams } = services;
  return (router: ConnectRouter) =>
    router.service(TokenService, {
      async createToken(request, context) {
        const name = checkName("name", request.name);
        const role = checkCreatableRole(request.role);
        const issued = issueToken();
        const token = await insertToken(callEntityManager(context), {
          id: issued.id,
          name,
          role,
          hostUuid: null,
          secretHash: issued.secretHash,
        });
        return create(CreateTokenResponseSchema, {
          apiToken: toApiTokenMessage(token),
          token: issued.text,
        });
      },

      async listTokens(request, context) {
        if (request.pageSize < 0) {
          throw invalidArgument(
            `page_size ${request.pageSize} must not be negative`,
          );
        }
        const pageSize = Math.min(
          request.pageSize || DEFAULT_PAGE_SIZE,
          MAX_PAGE_SIZE,
        );
        const after =
          request.pageToken === ""
            ? undefined
            : readPageToken(request.pageToken);
        const tokens = await listTokens(
          callEntityManager(context),
          request.showRevoked,
          after,
          pageSize + 1,
        );
        const page = tokens.slice(0, pageSize);
        const last = page.at(-1);
        return create(ListTokensResponseSchema, {
          apiTokens: page.map(toApiTokenMessage),
          nextPageToken:
            tokens.length > pageSize && last
              ? Buffer.from(last.id).toString("base64url")
              : "",
        });
      },

      async revokeToken(request, context) {
        const id = checkUuid("token_id", request.tokenId);
        const token = await revokeToken(callEntityManager(context), id);
        if (!token) {
          throw new ConnectError(`token ${id} does not exist`, Code.NotFound);
        }
        streams.endTokens([id], revokedTokenError());
        return create(RevokeTokenResponseSchema, {
          apiToken: toApiTokenMessage(token),
        });
      },
    });
}
