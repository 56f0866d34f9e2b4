import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import type { HostState } from "../domain/host.js";
import type { RowFilter } from "../domain/row-filter.js";
import type { PageCursor } from "../storage/lifecycle-reads.js";
import { invalidArgument } from "./invalid.js";

interface TokenBody<Position> {
  /** Where the next page starts. */
  readonly p: Position;
  /** Digest of the filter the page was read with. */
  readonly f: string;
}

/**
 * Issues and checks page tokens. A token is the position after the last
 * item of a page, bound to the filter it was read with and signed with the
 * service's key, so a token the service did not issue, or one reused with
 * another filter, is refused.
 */
class SignedPageTokens<Filter, Position> {
  constructor(
    private readonly key: Buffer,
    private readonly canonical: (filter: Filter) => unknown,
    private readonly filterName: string,
  ) {}

  issue(filter: Filter, position: Position): string {
    const body: TokenBody<Position> = { p: position, f: this.#digest(filter) };
    const payload = Buffer.from(JSON.stringify(body)).toString("base64url");
    return `${payload}.${this.#sign(payload)}`;
  }

  /** The position a token stands for; INVALID_ARGUMENT if it is not ours. */
  read(filter: Filter, token: string): Position {
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
    ) as TokenBody<Position>;
    if (body.f !== this.#digest(filter)) {
      throw invalidArgument(
        `page_token was issued for a different filter; send the same ${this.filterName} as the first page`,
      );
    }
    return body.p;
  }

  #sign(payload: string): string {
    return createHmac("sha256", this.key).update(payload).digest("base64url");
  }

  #digest(filter: Filter): string {
    return createHash("sha256")
      .update(JSON.stringify(this.canonical(filter)))
      .digest("base64url")
      .slice(0, 22);
  }
}

/** List page tokens: the started_at and id after which the next page starts. */
export class PageTokens {
  readonly #tokens: SignedPageTokens<RowFilter, { s: number; i: string }>;

  constructor(key: Buffer) {
    this.#tokens = new SignedPageTokens(
      key,
      (filter) => [
        [...(filter.ids ?? [])].sort(),
        filter.deckyName ?? null,
        filter.hostUuid ?? null,
        filter.operation ?? null,
        [...(filter.statuses ?? [])].sort(),
      ],
      "filters",
    );
  }

  issue(filter: RowFilter, last: PageCursor): string {
    return this.#tokens.issue(filter, {
      s: last.startedAt.getTime(),
      i: last.id,
    });
  }

  read(filter: RowFilter, token: string): PageCursor {
    const { s, i } = this.#tokens.read(filter, token);
    return { startedAt: new Date(s), id: i };
  }
}

/** ListHosts page tokens: the host_uuid after which the next page starts. */
export class HostPageTokens {
  readonly #tokens: SignedPageTokens<readonly HostState[], string>;

  constructor(key: Buffer) {
    this.#tokens = new SignedPageTokens(
      key,
      (states) => [...states].sort(),
      "states",
    );
  }

  issue(states: readonly HostState[], lastHostUuid: string): string {
    return this.#tokens.issue(states, lastHostUuid);
  }

  read(states: readonly HostState[], token: string): string {
    return this.#tokens.read(states, token);
  }
}
