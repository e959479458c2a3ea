// An in-process fake of the notifier WebSocket server (DESIGN.md §5), built on `ws`, for the
// client's unit tests. It keeps per-channel history (offsets from 1, one epoch), replays after
// `since`, answers publish on `chat:` channels, accepts `auth` and `refresh` (as user "42"),
// sends presence frames on request, and lets a test take over any frame.
// It lives outside test/ because `node --test test/` runs every .js file under test/.

import { EventEmitter, once } from "node:events";
import { WebSocketServer } from "ws";

export class FakeServer extends EventEmitter {
  /**
   * @param {object} [options]
   * @param {number} [options.heartbeat] seconds, sent in hello
   * @param {(conn: Conn, frame: any) => boolean | void} [options.onFrame]
   *   return true to say the frame was handled and skip the default handling
   * @param {(conn: Conn) => boolean | void} [options.onConnection]
   *   return true to skip the hello
   */
  static async start(options = {}) {
    const server = new FakeServer(options);
    await once(server.wss, "listening");
    const { port } = /** @type {import("node:net").AddressInfo} */ (server.wss.address());
    server.url = `ws://127.0.0.1:${port}/ws/`;
    return server;
  }

  constructor({ heartbeat = 25, onFrame, onConnection } = {}) {
    super();
    this.heartbeat = heartbeat;
    this.onFrame = onFrame;
    this.onConnection = onConnection;
    this.url = "";
    /** @type {Conn[]} */
    this.connections = [];
    /** @type {Map<string, {epoch: string, events: any[]}>} */
    this.channels = new Map();
    this.wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
    this.wss.on("connection", (ws) => this._accept(ws));
  }

  /** The most recent connection. */
  get last() {
    return this.connections[this.connections.length - 1];
  }

  /** Frames received on all connections, in order, as [connIndex, frame]. */
  get frames() {
    return this.connections.flatMap((conn) => conn.frames.map((frame) => [conn.index, frame]));
  }

  channel(name) {
    let channel = this.channels.get(name);
    if (!channel) this.channels.set(name, (channel = { epoch: "e1", events: [] }));
    return channel;
  }

  /** Store an event and send it to current subscribers, as realtime.publish would. */
  publish(name, event, data) {
    const channel = this.channel(name);
    const frame = {
      type: "event",
      channel: name,
      offset: channel.events.length + 1,
      id: `id-${name}-${channel.events.length + 1}`,
      event,
      data,
      ts: 1760000000.123,
    };
    channel.events.push(frame);
    for (const conn of this.connections) {
      if (conn.subscriptions.has(name)) conn.send(frame);
    }
    return frame;
  }

  /** Send a presence frame (`join` or `leave`) to the channel's current subscribers. */
  presence(name, type, user) {
    const frame = { type, channel: name, user };
    for (const conn of this.connections) {
      if (conn.subscriptions.has(name)) conn.send(frame);
    }
    return frame;
  }

  _accept(ws) {
    const conn = new Conn(ws, this.connections.length);
    this.connections.push(conn);
    ws.on("message", (data) => {
      const frame = JSON.parse(String(data));
      conn.frames.push(frame);
      this.emit("frame", conn, frame);
      if (this.onFrame?.(conn, frame) === true) return;
      this._handle(conn, frame);
    });
    ws.on("close", (code) => {
      conn.closeCode = code;
      this.emit("close", conn, code);
    });
    if (this.onConnection?.(conn) !== true) {
      conn.send({ type: "hello", protocol: 1, connection: `c${conn.index}`, user: null, heartbeat: this.heartbeat });
    }
    this.emit("connection", conn);
  }

  _handle(conn, frame) {
    const ref = frame.ref;
    switch (frame.op) {
      case "auth":
        conn.token = frame.token;
        return conn.send({ type: "authenticated", user: "42", ref });
      case "refresh":
        conn.token = frame.token;
        conn.refreshes.push(frame.token);
        return conn.send({ type: "authenticated", user: "42", ref });
      case "subscribe": {
        const channel = this.channel(frame.channel);
        const latest = channel.events.length;
        const since = frame.since;
        const recovered = !since || since.offset === 0 || since.epoch === channel.epoch;
        conn.subscriptions.add(frame.channel);
        conn.send({ type: "subscribed", channel: frame.channel, offset: latest, epoch: channel.epoch, recovered, ref });
        if (since && recovered) {
          for (const event of channel.events.slice(since.offset)) conn.send(event);
        }
        return;
      }
      case "unsubscribe":
        conn.subscriptions.delete(frame.channel);
        return conn.send({ type: "unsubscribed", channel: frame.channel, ref });
      case "publish": {
        if (!frame.channel.startsWith("chat:")) {
          return conn.send({ type: "error", code: "forbidden", message: `clients may not publish to '${frame.channel}'`, ref });
        }
        const event = this.publish(frame.channel, frame.event, frame.data);
        return conn.send({ type: "published", channel: frame.channel, offset: event.offset, id: event.id, ref });
      }
      case "ping":
        return conn.send({ type: "pong", ref });
      case "pong":
        return;
      default:
        return conn.send({ type: "error", code: "unknown_op", message: `unknown op ${frame.op}`, ref });
    }
  }

  async stop() {
    for (const conn of this.connections) conn.ws.terminate();
    await new Promise((resolve) => this.wss.close(resolve));
  }
}

export class Conn {
  constructor(ws, index) {
    this.ws = ws;
    this.index = index;
    /** @type {any[]} */
    this.frames = [];
    /** @type {Set<string>} */
    this.subscriptions = new Set();
    /** @type {string | undefined} the token of the last auth or refresh */
    this.token = undefined;
    /** @type {string[]} tokens received with `refresh`, in order */
    this.refreshes = [];
    /** @type {number | undefined} */
    this.closeCode = undefined;
  }

  send(frame) {
    if (this.ws.readyState === this.ws.OPEN) this.ws.send(JSON.stringify(frame));
  }

  close(code, reason) {
    this.ws.close(code, reason);
  }

  /** Drop the TCP connection without a close frame: the client sees 1006. */
  drop() {
    this.ws.terminate();
  }
}

/**
 * Resolve once `predicate()` is truthy, polling; reject after `timeout` ms so a broken test
 * fails instead of hanging. The timeout is a safety net, not an assertion about speed.
 */
export async function until(predicate, { timeout = 5000, message = "condition" } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${message}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Resolve with the payload of the next `name` event of `client` that satisfies `predicate`. */
export function nextEvent(client, name, predicate = () => true, { timeout = 5000 } = {}) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      client.off(name, listener);
      reject(new Error(`timed out waiting for client event ${name}`));
    }, timeout);
    const listener = (payload) => {
      if (!predicate(payload)) return;
      clearTimeout(timer);
      client.off(name, listener);
      resolve(payload);
    };
    client.on(name, listener);
  });
}

/** Let pending I/O and timers of `ms` run: used only to show that nothing more happens. */
export function settle(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * A JWT-shaped token with these claims and a dummy signature: the client reads `exp` without
 * verifying anything, and the fake server accepts any token.
 * @param {Record<string, unknown>} claims
 */
export function fakeJwt(claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  return `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}.c2lnbmF0dXJl`;
}
