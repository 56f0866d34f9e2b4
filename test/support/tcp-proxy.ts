import { once } from "node:events";
import { connect, createServer, type Server, type Socket } from "node:net";

/** Options of `TcpProxy.start`. */
export interface TcpProxyOptions {
  /**
   * Called for each new connection: the number of bytes the client may send
   * through it before the proxy forwards only part of the next chunk and
   * cuts the connection, as a network fault would at that point. Undefined,
   * or a function returning Infinity: the connection is never cut so.
   */
  requestBytesBeforeCut?: () => number;
}

interface Connection {
  readonly client: Socket;
  readonly upstream: Socket;
}

/**
 * A TCP proxy on 127.0.0.1 in front of a server, so a test can cut the
 * connections through it at chosen or random points, freeze them, or point
 * it at a server that was restarted on another port.
 */
export class TcpProxy {
  readonly #server: Server;
  readonly #options: TcpProxyOptions;
  readonly #connections = new Set<Connection>();
  #targetPort: number;
  #cuts = 0;
  #frozen = false;

  private constructor(
    server: Server,
    targetPort: number,
    options: TcpProxyOptions,
  ) {
    this.#server = server;
    this.#targetPort = targetPort;
    this.#options = options;
  }

  /** A proxy to `targetUrl`, listening on a free port. */
  static async start(
    targetUrl: string,
    options: TcpProxyOptions = {},
  ): Promise<TcpProxy> {
    const server = createServer();
    const proxy = new TcpProxy(server, portOf(targetUrl), options);
    server.on("connection", (client) => proxy.#forward(client));
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    return proxy;
  }

  /** The URL clients use instead of the server's. */
  get url(): string {
    const { port } = this.#server.address() as { port: number };
    return `http://127.0.0.1:${port}`;
  }

  /** How many open connections the proxy has cut. */
  get cuts(): number {
    return this.#cuts;
  }

  /** Sends new connections to the server at `targetUrl` from now on. */
  retarget(targetUrl: string): void {
    this.#targetPort = portOf(targetUrl);
  }

  /**
   * Drops every byte in both directions from now on, on open connections and
   * new ones alike, as a network that silently loses packets does: nothing
   * is closed, nothing answers.
   */
  freeze(): void {
    this.#frozen = true;
  }

  /**
   * Forwards again. The connections open while frozen lost bytes, so they
   * are cut; new connections work.
   */
  thaw(): void {
    this.#frozen = false;
    this.cut();
  }

  /** Destroys every open connection, both sides. */
  cut(): void {
    for (const connection of this.#connections) this.#cut(connection);
  }

  async close(): Promise<void> {
    const closed = once(this.#server, "close");
    this.#server.close();
    this.cut();
    await closed;
  }

  #forward(client: Socket): void {
    const upstream = connect(this.#targetPort, "127.0.0.1");
    const connection = { client, upstream };
    this.#connections.add(connection);
    for (const socket of [client, upstream]) {
      // A reset or a refused upstream ends both sides, nothing more.
      socket.on("error", () => undefined);
      socket.on("close", () => {
        this.#connections.delete(connection);
        client.destroy();
        upstream.destroy();
      });
    }

    let budget = this.#options.requestBytesBeforeCut?.() ?? Infinity;
    client.on("data", (chunk: Buffer) => {
      if (this.#frozen) return;
      if (chunk.length <= budget) {
        budget -= chunk.length;
        upstream.write(chunk);
        return;
      }
      // The server gets the start of the chunk, then the connection ends.
      upstream.end(chunk.subarray(0, budget));
      this.#cut(connection);
    });
    upstream.on("data", (chunk: Buffer) => {
      if (!this.#frozen) client.write(chunk);
    });
  }

  #cut(connection: Connection): void {
    if (!this.#connections.delete(connection)) return;
    this.#cuts += 1;
    connection.client.destroy();
    // Let a partial chunk written with end() go out before the reset.
    if (!connection.upstream.writableEnded) connection.upstream.destroy();
  }
}

function portOf(url: string): number {
  return Number(new URL(url).port);
}
