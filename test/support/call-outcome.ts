import { ConnectError } from "@connectrpc/connect";

/**
 * How a call ended: "ok", or the numeric code and the message it failed
 * with, such as "14: the database is unavailable; retry later".
 */
export async function outcomeOf(call: Promise<unknown>): Promise<string> {
  try {
    await call;
    return "ok";
  } catch (error) {
    const { code, rawMessage } = ConnectError.from(error);
    return `${code}: ${rawMessage}`;
  }
}
