import { type Command, Option } from "commander";
import {
  DecommissionHostResponseSchema,
  EnrollHostResponseSchema,
  HostService,
  HostState,
  ListHostsResponseSchema,
  RotateHostTokenResponseSchema,
} from "../../gen/decky/lifecycle/v1/host_pb.js";
import { type Connection, withConnection } from "./connection-options.js";
import { print, warnShownOnce } from "./output.js";
import { allPages, clientOf } from "./server-client.js";

const hostStates = {
  enrolled: HostState.ENROLLED,
  alive: HostState.ALIVE,
  lost: HostState.LOST,
  decommissioned: HostState.DECOMMISSIONED,
} as const;

const DEFAULT_URL = "http://127.0.0.1:8080";

/**
 * Adds `host enrol`, `host list`, `host rotate` and `host decommission` to
 * `program`; each calls a running server.
 */
export function addHostCommands(program: Command): void {
  const host = program
    .command("host")
    .description("enrol, list, rotate and decommission worker hosts");

  withConnection(
    host
      .command("enrol")
      .alias("enroll")
      .description(
        "enrol a worker host and print its id and worker token, once",
      )
      .requiredOption("--name <name>", "a name to recognise the host by")
      .option(
        "--host-uuid <uuid>",
        "the host's id; the server picks one if unset",
      )
      .option(
        "--certificate-fingerprint <sha256>",
        "pin this client certificate (SHA-256, hex) to the host",
      ),
    DEFAULT_URL,
  ).action(
    async (
      options: Connection & {
        name: string;
        hostUuid?: string;
        certificateFingerprint?: string;
      },
    ) => {
      const response = await clientOf(HostService, options).enrollHost({
        name: options.name,
        ...(options.hostUuid === undefined
          ? {}
          : { hostUuid: options.hostUuid }),
        ...(options.certificateFingerprint === undefined
          ? {}
          : { certificateFingerprint: options.certificateFingerprint }),
      });
      print(EnrollHostResponseSchema, response);
      warnShownOnce();
    },
  );

  withConnection(
    host
      .command("list")
      .description("list the worker hosts")
      .addOption(
        new Option("--state <state...>", "only hosts in these states").choices(
          Object.keys(hostStates),
        ),
      ),
    DEFAULT_URL,
  ).action(
    async (options: Connection & { state?: (keyof typeof hostStates)[] }) => {
      const client = clientOf(HostService, options);
      const states = (options.state ?? []).map((state) => hostStates[state]);
      const hosts = await allPages(async (pageToken) => {
        const page = await client.listHosts({
          states,
          pageToken,
          pageSize: 500,
        });
        return { items: page.hosts, nextPageToken: page.nextPageToken };
      });
      print(ListHostsResponseSchema, {
        $typeName: ListHostsResponseSchema.typeName,
        hosts,
        nextPageToken: "",
      });
    },
  );

  withConnection(
    host
      .command("rotate")
      .description(
        "revoke a host's worker tokens and print its new one, once; its open streams end",
      )
      .argument("<host-uuid>"),
    DEFAULT_URL,
  ).action(async (hostUuid: string, options: Connection) => {
    const response = await clientOf(HostService, options).rotateHostToken({
      hostUuid,
    });
    print(RotateHostTokenResponseSchema, response);
    warnShownOnce();
  });

  withConnection(
    host
      .command("decommission")
      .description(
        "retire a host for good: its tokens are refused, its streams end, its open rows fail",
      )
      .argument("<host-uuid>"),
    DEFAULT_URL,
  ).action(async (hostUuid: string, options: Connection) => {
    const response = await clientOf(HostService, options).decommissionHost({
      hostUuid,
    });
    print(DecommissionHostResponseSchema, response);
  });
}
