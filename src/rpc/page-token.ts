import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import type { RowFilter } from "../domain/row-filter.js";
import type { PageCursor } from "../storage/lifecycle-reads.js";
import { invalidArgument } from "./invalid.js";

interface TokenBody {
  /** started_at of the last row of the page, in epoch milliseconds. */
  readonly s: number;
  /** id of the last row of the page. */
  readonly i: string;
  /** Digest of the filter the page was read with. */
  readonly f: string;
}

/**
 * Issues and checks List page tokens. A token is the position after the last
 * row of a page, bound to the filter it was read with and signed with the
 * service's key, so a token the service did not issue, or one reused with
 * another filter, is refused.
 */
export class PageTokens {
  constructor(private readonly key: Buffer) {}

  issue(filter: RowFilter, last: PageCursor): string {
    const body: TokenBody = {
      s: last.startedAt.getTime(),
      i: last.id,
      f: digest(filter),
    };
    const payload = Buffer.from(JSON.stringify(body)).toString("base64url");
    return `${payload}.${this.#sign(payload)}`;
  }

  /** The position a token stands for; INVALID_ARGUMENT if it is not ours. */
  read(filter: RowFilter, token: string): PageCursor {
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
    if (body.f !== digest(filter)) {
      throw invalidArgument(
        "page_token was issued for a different filter; send the same filters as the first page",
      );
    }
    return { startedAt: new Date(body.s), id: body.i };
  }

  #sign(payload: string): string {
    return createHmac("sha256", this.key).update(payload).digest("base64url");
  }
}

function digest(filter: RowFilter): string {
  const canonical = JSON.stringify([
    [...(filter.ids ?? [])].sort(),
    filter.deckyName ?? null,
    filter.hostUuid ?? null,
    filter.operation ?? null,
    [...(filter.statuses ?? [])].sort(),
  ]);
  return createHash("sha256")
    .update(canonical)
    .digest("base64url")
    .slice(0, 22);
}
