import { create } from "@bufbuild/protobuf";
import type { ConnectRouter } from "@connectrpc/connect";
import {
  HostService,
  type ListHostsRequest,
  ListHostsResponseSchema,
} from "../../gen/decky/lifecycle/v1/host_pb.js";
import type { HostState } from "../domain/host.js";
import { listHosts } from "../storage/host-reads.js";
import { hostStateOf, toHostMessage } from "./host-convert.js";
import { hostEnrolmentHandlers } from "./host-enrolment.js";
import { invalidArgument } from "./invalid.js";
import type { HostPageTokens } from "./page-token.js";
import { callEntityManager, type Services } from "./services.js";
import { DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE } from "./validate.js";

/** What HostService's handlers need from the running server. */
export interface HostServices extends Services {
  readonly hostPageTokens: HostPageTokens;
}

/** A validated ListHosts. */
interface ListHostsQuery {
  readonly states: HostState[];
  readonly pageSize: number;
  readonly pageToken: string | undefined;
}

function validateListHosts(request: ListHostsRequest): ListHostsQuery {
  const states = request.states.map((value, index) => {
    const state = hostStateOf(value);
    if (!state) {
      throw invalidArgument(
        `states[${index}] must be a known host state other than HOST_STATE_UNSPECIFIED, not ${value}`,
      );
    }
    return state;
  });
  if (request.pageSize < 0) {
    throw invalidArgument(`page_size ${request.pageSize} must not be negative`);
  }
  return {
    states: [...new Set(states)],
    pageSize: Math.min(request.pageSize || DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE),
    pageToken: request.pageToken === "" ? undefined : request.pageToken,
  };
}

/**
 * Registers HostService's handlers. A method without a handler here answers
 * UNIMPLEMENTED.
 */
export function hostRoutes(services: HostServices) {
  const { hostPageTokens } = services;
  return (router: ConnectRouter) =>
    router.service(HostService, {
      ...hostEnrolmentHandlers(services),
      async listHosts(request, context) {
        const query = validateListHosts(request);
        const after =
          query.pageToken === undefined
            ? undefined
            : hostPageTokens.read(query.states, query.pageToken);
        const hosts = await listHosts(
          callEntityManager(context),
          query.states,
          after,
          query.pageSize + 1,
        );
        const page = hosts.slice(0, query.pageSize);
        const last = page.at(-1);
        return create(ListHostsResponseSchema, {
          hosts: page.map(toHostMessage),
          nextPageToken:
            hosts.length > query.pageSize && last
              ? hostPageTokens.issue(query.states, last.hostUuid)
              : "",
        });
      },
    });
}
