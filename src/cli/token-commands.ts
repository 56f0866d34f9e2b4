import { type Command, Option } from "commander";
import {
  CreateTokenResponseSchema,
  ListTokensResponseSchema,
  RevokeTokenResponseSchema,
  Role,
  TokenService,
} from "../../gen/decky/lifecycle/v1/token_pb.js";
import { issueToken } from "../auth/token.js";
import { checkName } from "../rpc/host-enrolment.js";
import { checkCreatableRole, toApiTokenMessage } from "../rpc/token-service.js";
import { insertToken, listTokens, revokeToken } from "../storage/api-tokens.js";
import { type Connection, withConnection } from "./connection-options.js";
import { onDatabase } from "./database.js";
import { UsageError } from "./errors.js";
import { print, warnShownOnce } from "./output.js";
import { allPages, clientOf } from "./server-client.js";

const roles = {
  admin: Role.ADMIN,
  operator: Role.OPERATOR,
  viewer: Role.VIEWER,
} as const;

/**
 * Adds `token create`, `token list` and `token revoke` to `program`: through
 * a server with --url, else directly on the database the server uses.
 */
export function addTokenCommands(program: Command): void {
  const token = program
    .command("token")
    .description("create, list and revoke bearer tokens");

  withConnection(
    token
      .command("create")
      .description("create a token and print it, this once")
      .addOption(
        new Option("--role <role>", "what the token may do")
          .choices(Object.keys(roles))
          .makeOptionMandatory(),
      )
      .requiredOption("--name <name>", "who or what holds the token"),
  ).action(
    async (
      options: Connection & { role: keyof typeof roles; name: string },
    ) => {
      if (options.url !== undefined) {
        const response = await clientOf(TokenService, options).createToken({
          name: options.name,
          role: roles[options.role],
        });
        print(CreateTokenResponseSchema, response);
      } else {
        const name = checkName("name", options.name);
        const role = checkCreatableRole(roles[options.role]);
        const issued = issueToken();
        const stored = await onDatabase((em) =>
          insertToken(em, {
            id: issued.id,
            name,
            role,
            hostUuid: null,
            secretHash: issued.secretHash,
          }),
        );
        print(CreateTokenResponseSchema, {
          $typeName: CreateTokenResponseSchema.typeName,
          apiToken: toApiTokenMessage(stored),
          token: issued.text,
        });
      }
      warnShownOnce();
    },
  );

  withConnection(
    token
      .command("list")
      .description("list the tokens (never their secrets)")
      .option("--show-revoked", "include revoked tokens", false),
  ).action(async (options: Connection & { showRevoked: boolean }) => {
    if (options.url !== undefined) {
      const client = clientOf(TokenService, options);
      const apiTokens = await allPages(async (pageToken) => {
        const page = await client.listTokens({
          showRevoked: options.showRevoked,
          pageToken,
          pageSize: 500,
        });
        return { items: page.apiTokens, nextPageToken: page.nextPageToken };
      });
      print(ListTokensResponseSchema, {
        $typeName: ListTokensResponseSchema.typeName,
        apiTokens,
        nextPageToken: "",
      });
      return;
    }
    const stored = await onDatabase((em) =>
      listTokens(em, options.showRevoked, undefined, Number.MAX_SAFE_INTEGER),
    );
    print(ListTokensResponseSchema, {
      $typeName: ListTokensResponseSchema.typeName,
      apiTokens: stored.map(toApiTokenMessage),
      nextPageToken: "",
    });
  });

  withConnection(
    token
      .command("revoke")
      .description(
        "revoke a token; through a server (--url), its open streams end too",
      )
      .argument("<token-id>", "the token's id, as `token list` shows it"),
  ).action(async (tokenId: string, options: Connection) => {
    if (options.url !== undefined) {
      const response = await clientOf(TokenService, options).revokeToken({
        tokenId,
      });
      print(RevokeTokenResponseSchema, response);
      return;
    }
    if (!/^[0-9a-f-]{36}$/i.test(tokenId)) {
      throw new UsageError(`token id ${JSON.stringify(tokenId)} is not a UUID`);
    }
    const revoked = await onDatabase((em) => revokeToken(em, tokenId));
    if (!revoked) throw new UsageError(`token ${tokenId} does not exist`);
    print(RevokeTokenResponseSchema, {
      $typeName: RevokeTokenResponseSchema.typeName,
      apiToken: toApiTokenMessage(revoked),
    });
  });
}
