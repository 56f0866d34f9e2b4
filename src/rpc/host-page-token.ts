import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import type { HostState } from "../domain/host.js";
import { invalidArgument } from "./invalid.js";

interface TokenBody {
  /** host_uuid of the last host of the page. */
  readonly h: string;
  /** Digest of the states filter the page was read with. */
  readonly f: string;
}

/**
 * Issues and checks ListHosts page tokens, as PageTokens does for List: the
 * host_uuid after which the next page starts, bound to the states filter
 * and signed with the service's key.
 */
export class HostPageTokens {
  constructor(private readonly key: Buffer) {}

  issue(states: readonly HostState[], lastHostUuid: string): string {
    const body: TokenBody = { h: lastHostUuid, f: digest(states) };
    const payload = Buffer.from(JSON.stringify(body)).toString("base64url");
    return `${payload}.${this.#sign(payload)}`;
  }

  /** The host_uuid a token stands for; INVALID_ARGUMENT if it is not ours. */
  read(states: readonly HostState[], token: string): string {
    const [payload, signature, extra] = token.split(".");
    if (!payload || !signature || extra !== undefined) {
      throw invalidArgument("page_token is not a token this service issued");
    }
    const expected = Buffer.from(this.#sign(payload));
    const given = Buffer.from(signature);
    if (expected.length !== given.length || !timingSafeEqual(expected, given)) {
      throw invalidArgument("page_token is not a token this service issued");
    }
    const body = JSON.parse(
      Buffer.from(payload, "base64url").toString(),
    ) as TokenBody;
    if (body.f !== digest(states)) {
      throw invalidArgument(
        "page_token was issued for a different filter; send the same states as the first page",
      );
    }
    return body.h;
  }

  #sign(payload: string): string {
    return createHmac("sha256", this.key).update(payload).digest("base64url");
  }
}

function digest(states: readonly HostState[]): string {
  return createHash("sha256")
    .update(JSON.stringify([...states].sort()))
    .digest("base64url")
    .slice(0, 22);
}
