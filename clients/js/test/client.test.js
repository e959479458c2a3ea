// NotifierClient against an in-process fake server (testing/fake-server.js) on `ws`.
// Waits poll for a condition with a generous safety timeout; nothing asserts on timing.

import assert from "node:assert/strict";
import { describe, it, test } from "node:test";
import { WebSocket } from "ws";

import { NotifierClient, NotifierError } from "../notifier.js";
import { FakeServer, fakeJwt, nextEvent, settle, until } from "../testing/fake-server.js";

/**
 * A fake server and a client with short reconnect delays, both torn down after the test.
 * @param {import("node:test").TestContext} t
 */
async function setup(t, { server: serverOptions = {}, client: clientOptions = {}, listen = (client) => {} } = {}) {
  const server = await FakeServer.start(serverOptions);
  const client = new NotifierClient(server.url, {
    WebSocket: /** @type {any} */ (WebSocket),
    minReconnectDelay: 5,
    maxReconnectDelay: 20,
    ...clientOptions,
  });
  listen(client); // before the connect that the constructor schedules
  t.after(async () => {
    client.close();
    await server.stop();
  });
  return { server, client };
}

const connected = (client) => until(() => client.state === "connected", { message: "connected" });

test("state goes connecting, connected, disconnected on a drop, connected again, closed", async (t) => {
  const states = [];
  const listen = (client) => client.on("state", ({ oldState, newState }) => states.push(`${oldState}>${newState}`));
  const { server, client } = await setup(t, { listen });
  await connected(client);
  server.last.drop();
  await until(() => server.connections.length === 2 && client.state === "connected");
  client.close();
  assert.equal(client.state, "closed");
  assert.deepEqual(states, [
    "disconnected>connecting",
    "connecting>connected",
    "connected>disconnected",
    "disconnected>connecting",
    "connecting>connected",
    "connected>closed",
  ]);
});

test("frames are queued until the socket is open; auth goes first", async (t) => {
  const { server, client } = await setup(t, { client: { token: "tok-1" } });
  client.subscribe("news", () => {});
  const published = client.publish("chat:lobby", "message", { text: "hi" });
  assert.equal(server.connections.length, 0);
  const reply = await published;
  assert.equal(reply.type, "published");
  assert.equal(reply.offset, 1);
  const frames = server.last.frames;
  assert.deepEqual(frames.map((f) => f.op), ["auth", "subscribe", "publish"]);
  assert.equal(frames[0].token, "tok-1");
  assert.equal(frames[1].since, undefined);
  assert.deepEqual(frames[2].data, { text: "hi" });
  assert.ok(!server.url.includes("tok-1"));
});

test("after the server drops the socket the client resubscribes with since and misses nothing", async (t) => {
  const { server, client } = await setup(t);
  const got = [];
  client.subscribe("news", (event) => got.push(event.offset));
  await nextEvent(client, "subscribed");
  server.publish("news", "a", 1);
  server.publish("news", "b", 2);
  await until(() => got.length === 2);
  const disconnected = nextEvent(client, "state", (s) => s.newState === "disconnected");
  server.last.drop();
  await disconnected;
  server.publish("news", "c", 3); // while the client is away: must come back by replay
  const resubscribed = await nextEvent(client, "subscribed");
  await until(() => got.length === 3);
  assert.deepEqual(got, [1, 2, 3]);
  assert.deepEqual(resubscribed, { channel: "news", recovered: true, offset: 3, epoch: "e1" });
  const resubscribe = server.connections[1].frames.find((f) => f.op === "subscribe");
  assert.deepEqual(resubscribe.since, { offset: 2, epoch: "e1" });
  server.publish("news", "d", 4);
  await until(() => got.length === 4);
  assert.deepEqual(got, [1, 2, 3, 4]);
});

test("duplicate events are dropped by offset; handlers get the whole frame", async (t) => {
  const { server, client } = await setup(t);
  const got = [];
  const global = [];
  client.on("event", (event) => global.push(event.offset));
  client.subscribe("news", (event) => got.push(event));
  await nextEvent(client, "subscribed");
  const frame = (offset) => ({ type: "event", channel: "news", offset, id: `i${offset}`, event: "e", data: { n: offset }, ts: 1 });
  for (const offset of [1, 2, 2, 1, 3]) server.last.send(frame(offset));
  server.last.send({ ...frame(9), channel: "other" }); // not subscribed: ignored
  server.last.send(frame(4));
  await until(() => got.length === 4);
  assert.deepEqual(got.map((e) => e.offset), [1, 2, 3, 4]);
  assert.deepEqual(got[0], frame(1));
  assert.deepEqual(global, [1, 2, 3, 4]);
});

test("an event frame carrying a new epoch restarts offsets instead of being dropped", async (t) => {
  const { server, client } = await setup(t);
  const got = [];
  client.subscribe("news", (event) => got.push(`${event.epoch ?? "e1"}/${event.offset}`));
  await nextEvent(client, "subscribed");
  server.last.send({ type: "event", channel: "news", offset: 5, id: "a", event: "e", data: null, ts: 1 });
  server.last.send({ type: "event", channel: "news", offset: 1, epoch: "e2", id: "b", event: "e", data: null, ts: 1 });
  server.last.send({ type: "event", channel: "news", offset: 1, epoch: "e2", id: "b", event: "e", data: null, ts: 1 });
  server.last.send({ type: "event", channel: "news", offset: 2, epoch: "e2", id: "c", event: "e", data: null, ts: 1 });
  await until(() => got.length === 3);
  assert.deepEqual(got, ["e1/5", "e2/1", "e2/2"]);
});

test("an event of a new epoch without a subscribed frame before it is surfaced as recovered:false", async (t) => {
  const { server, client } = await setup(t);
  const seen = [];
  client.on("subscribed", (info) => seen.push(info));
  client.on("event", (event) => seen.push(`${event.epoch}/${event.offset}`));
  client.subscribe("news", () => {});
  await until(() => seen.length === 1);
  const event = (offset, epoch) => ({ type: "event", channel: "news", offset, epoch, id: `${epoch}${offset}`, event: "e", data: null, ts: 1 });
  server.last.send(event(1, "e1"));
  server.last.send(event(1, "e2")); // an older server: the new epoch's first event, unannounced
  server.last.send(event(2, "e2"));
  // Today's server announces the next restart itself: the client does not announce it twice.
  server.last.send({ type: "subscribed", channel: "news", offset: 0, epoch: "e3", recovered: false });
  server.last.send(event(1, "e3"));
  await until(() => seen.length === 7);
  assert.deepEqual(seen, [
    { channel: "news", recovered: true, offset: 0, epoch: "e1" },
    "e1/1",
    { channel: "news", recovered: false, offset: 0, epoch: "e2" },
    "e2/1",
    "e2/2",
    { channel: "news", recovered: false, offset: 0, epoch: "e3" },
    "e3/1",
  ]);
});

test("recovered:false is surfaced when history no longer covers since", async (t) => {
  const { server, client } = await setup(t);
  server.publish("news", "a", 1);
  server.publish("news", "b", 2);
  const got = [];
  client.subscribe("news", (event) => got.push(event.offset), { since: { offset: 7, epoch: "gone" } });
  const subscribed = await nextEvent(client, "subscribed");
  assert.deepEqual(subscribed, { channel: "news", recovered: false, offset: 2, epoch: "e1" });
  assert.deepEqual(server.last.frames.find((f) => f.op === "subscribe").since, { offset: 7, epoch: "gone" });
  server.publish("news", "c", 3);
  await until(() => got.length === 1);
  assert.deepEqual(got, [3]);
});

test("a subscribed frame with recovered:false mid-stream is surfaced and delivery goes on after it", async (t) => {
  const { server, client } = await setup(t);
  const got = [];
  client.subscribe("news", (event) => got.push(event.offset));
  await nextEvent(client, "subscribed");
  server.publish("news", "a", 1);
  await until(() => got.length === 1);
  const resync = nextEvent(client, "subscribed");
  server.last.send({ type: "subscribed", channel: "news", offset: 5, epoch: "e1", recovered: false });
  assert.deepEqual(await resync, { channel: "news", recovered: false, offset: 5, epoch: "e1" });
  for (const offset of [5, 6]) {
    server.last.send({ type: "event", channel: "news", offset, epoch: "e1", id: `i${offset}`, event: "e", data: null, ts: 1 });
  }
  await until(() => got.length === 2);
  assert.deepEqual(got, [1, 6]);
});

test("no reconnect after a terminal close code (4501)", async (t) => {
  const { server, client } = await setup(t);
  const errors = [];
  client.on("error", (error) => errors.push(error));
  await connected(client);
  const closed = nextEvent(client, "state", (s) => s.newState === "closed");
  server.last.close(4501, "forbidden");
  await closed;
  assert.equal(errors.length, 1);
  assert.ok(errors[0] instanceof NotifierError);
  assert.equal(errors[0].code, 4501);
  await settle(100); // several times maxReconnectDelay: a reconnect would have happened by now
  assert.equal(server.connections.length, 1);
  assert.equal(client.state, "closed");
  assert.throws(() => client.subscribe("news", () => {}), NotifierError);
});

test("reconnects after close 4000 (server shutting down)", async (t) => {
  const { server, client } = await setup(t);
  await connected(client);
  server.last.close(4000, "shutdown");
  await until(() => server.connections.length === 2 && client.state === "connected");
});

test("the token function is called on every reconnect, and a fresh token is sent after 4001", async (t) => {
  let calls = 0;
  const token = async () => `t${++calls}`;
  const { server, client } = await setup(t, { client: { token } });
  await until(() => server.last?.token === "t1");
  server.last.close(4000, "shutdown");
  await until(() => server.connections.length === 2 && server.last.token === "t2");
  server.last.close(4001, "token expired");
  await until(() => server.connections.length === 3 && server.last.token === "t3");
  assert.equal(calls, 3);
  await connected(client);
  await until(() => client.user === "42", { message: "the authenticated frame" });
});

test("a token_expired error frame makes the client reconnect with a new token", async (t) => {
  let calls = 0;
  const { server, client } = await setup(t, { client: { token: () => `t${++calls}` } });
  await until(() => server.last?.token === "t1");
  server.last.send({ type: "error", code: "token_expired", message: "token expired" });
  await until(() => server.connections.length === 2 && server.last.token === "t2");
  await connected(client);
});

test("a failing token function is reported and retried", async (t) => {
  let calls = 0;
  const token = async () => {
    if (++calls === 1) throw new Error("token endpoint down");
    return "ok";
  };
  const { server, client } = await setup(t, { client: { token } });
  const error = await nextEvent(client, "error");
  assert.equal(error.code, "token_unavailable");
  await until(() => server.last?.token === "ok");
  await connected(client);
});

test("a static token that expired (4001) cannot be renewed: the client closes", async (t) => {
  const { server, client } = await setup(t, { client: { token: "static" } });
  const errors = [];
  client.on("error", (error) => errors.push(error));
  await connected(client);
  const closed = nextEvent(client, "state", (s) => s.newState === "closed");
  server.last.close(4001, "token expired");
  await closed;
  assert.equal(errors[0].code, 4001);
});

test("server pings are answered with pong", async (t) => {
  const { server, client } = await setup(t);
  await connected(client);
  server.last.send({ type: "ping" });
  await until(() => server.last.frames.some((f) => f.op === "pong"));
});

// A fake that never pings and ignores the client's pings: a dead connection, as the client sees it.
const silent = { heartbeat: 0.05, onFrame: (conn, frame) => frame.op === "ping" }; // timeout 100 ms

test("silence for two heartbeat intervals (from hello) closes the socket and reconnects", async (t) => {
  const { server, client } = await setup(t, { server: silent });
  const got = [];
  client.subscribe("news", (event) => got.push(event.offset));
  await nextEvent(client, "subscribed");
  server.publish("news", "a", 1);
  await until(() => got.length === 1);
  await until(() => server.connections.length >= 2, { message: "a reconnect after the heartbeat timeout" });
  await until(() => server.connections[0].closeCode !== undefined);
  assert.equal(server.connections[0].closeCode, 4003);
  assert.ok(server.connections[0].frames.some((f) => f.op === "ping"), "the client pinged before giving up");
  const resubscribe = await until(() => server.connections[1].frames.find((f) => f.op === "subscribe"));
  assert.deepEqual(resubscribe.since, { offset: 1, epoch: "e1" });
});

test("the heartbeatTimeout option overrides the hello's heartbeat", async (t) => {
  const { server } = await setup(t, {
    server: { onFrame: silent.onFrame }, // hello says 25 s
    client: { heartbeatTimeout: 80 },
  });
  await until(() => server.connections.length >= 2, { message: "a reconnect after heartbeatTimeout" });
});

test("a quiet server that answers the client's pings keeps the connection", async (t) => {
  // The fake answers {"op":"ping"} with {"type":"pong"} but never pings on its own.
  const { server, client } = await setup(t, { server: { heartbeat: 0.05 } });
  await connected(client);
  await until(() => server.last.frames.filter((f) => f.op === "ping").length >= 4, { message: "client pings" });
  assert.equal(server.connections.length, 1);
  assert.equal(client.state, "connected");
});

test("publish resolves on published and rejects on an error with the same ref", async (t) => {
  const { client } = await setup(t);
  const reply = await client.publish("chat:lobby", "message", { text: "hi" });
  assert.equal(reply.channel, "chat:lobby");
  assert.equal(reply.offset, 1);
  await assert.rejects(client.publish("news", "message", {}), (error) => {
    assert.ok(error instanceof NotifierError);
    assert.equal(error.code, "forbidden");
    assert.match(error.message, /may not publish/);
    return true;
  });
  const second = await client.publish("chat:lobby", "message", { text: "again" });
  assert.equal(second.offset, 2);
});

test("a publish in flight when the connection drops is rejected; queued ones are sent later", async (t) => {
  const { server, client } = await setup(t, {
    server: { onFrame: (conn, frame) => frame.op === "publish" && conn.index === 0 }, // never answered
  });
  await connected(client);
  const lost = client.publish("chat:lobby", "message", 1);
  await until(() => server.last.frames.some((f) => f.op === "publish"));
  server.last.drop();
  await assert.rejects(lost, (error) => error.code === "disconnected");
  const later = await client.publish("chat:lobby", "message", 2);
  assert.equal(later.type, "published");
});

test("close() stops reconnecting and rejects queued publishes", async (t) => {
  const { server, client } = await setup(t);
  await connected(client);
  const closedOnServer = new Promise((resolve) => server.once("close", (conn, code) => resolve(code)));
  client.close();
  assert.equal(await closedOnServer, 1000);
  await assert.rejects(client.publish("chat:lobby", "m", 1), (error) => error.code === "closed");
  await settle(100);
  assert.equal(server.connections.length, 1);
});

test("close() during the first connect rejects what was queued", async (t) => {
  const { server, client } = await setup(t);
  const queued = client.publish("chat:lobby", "m", 1);
  client.close();
  await assert.rejects(queued, (error) => error.code === "closed");
  await settle(50);
  assert.equal(server.connections.length, 0);
});

test("subscribe errors name the channel; a forbidden channel is not resubscribed", async (t) => {
  const { server, client } = await setup(t, {
    server: {
      onFrame: (conn, frame) => {
        if (frame.op !== "subscribe" || !frame.channel.startsWith("private:")) return false;
        conn.send({ type: "error", code: "forbidden", message: "no", ref: frame.ref });
        return true;
      },
    },
  });
  client.subscribe("private:x", () => {});
  client.subscribe("news", () => {});
  const error = await nextEvent(client, "error");
  assert.equal(error.code, "forbidden");
  assert.equal(error.channel, "private:x");
  server.last.drop();
  await until(() => server.connections.length === 2 && server.last.frames.some((f) => f.op === "subscribe"));
  assert.deepEqual(server.last.frames.filter((f) => f.op === "subscribe").map((f) => f.channel), ["news"]);
});

test("an unavailable subscribe is retried on the same connection", async (t) => {
  let refusals = 0;
  const { server, client } = await setup(t, {
    server: {
      onFrame: (conn, frame) => {
        if (frame.op !== "subscribe" || refusals++ > 0) return false;
        conn.send({ type: "error", code: "unavailable", message: "retry", ref: frame.ref });
        return true;
      },
    },
  });
  client.on("error", () => {});
  client.subscribe("news", () => {});
  await nextEvent(client, "subscribed");
  assert.equal(server.connections.length, 1);
  assert.equal(server.last.frames.filter((f) => f.op === "subscribe").length, 2);
});

test("unsubscribe stops delivery; handlers on one channel share one server subscription", async (t) => {
  const { server, client } = await setup(t);
  const a = [];
  const b = [];
  const subA = client.subscribe("news", (e) => a.push(e.offset));
  const subB = client.subscribe("news", (e) => b.push(e.offset));
  await nextEvent(client, "subscribed");
  assert.equal(server.last.frames.filter((f) => f.op === "subscribe").length, 1);
  server.publish("news", "x", 1);
  await until(() => a.length === 1 && b.length === 1);
  subA.unsubscribe();
  server.publish("news", "x", 2);
  await until(() => b.length === 2);
  assert.deepEqual(a, [1]);
  assert.equal(server.last.frames.filter((f) => f.op === "unsubscribe").length, 0);
  subB.unsubscribe();
  await until(() => server.last.frames.some((f) => f.op === "unsubscribe" && f.channel === "news"));
  subB.unsubscribe(); // twice is harmless
});

test("positions persist in storage so a new client resumes after them", async (t) => {
  const map = new Map();
  const storage = {
    getItem: (key) => map.get(key) ?? null,
    setItem: (key, value) => void map.set(key, value),
    removeItem: (key) => void map.delete(key),
  };
  const { server, client } = await setup(t, { client: { storage } });
  const got = [];
  client.subscribe("news", (event) => got.push(event.offset));
  await nextEvent(client, "subscribed");
  server.publish("news", "a", 1);
  server.publish("news", "b", 2);
  await until(() => got.length === 2);
  client.close();
  assert.deepEqual(JSON.parse([...map.values()][0]), { offset: 2, epoch: "e1" });
  assert.ok(![...map.keys()][0].includes("?"));
  server.publish("news", "c", 3);

  const again = new NotifierClient(server.url, { WebSocket: /** @type {any} */ (WebSocket), storage });
  t.after(() => again.close());
  const later = [];
  again.subscribe("news", (event) => later.push(event.offset));
  await until(() => later.length === 1);
  assert.deepEqual(later, [3]);
  assert.deepEqual(server.last.frames.find((f) => f.op === "subscribe").since, { offset: 2, epoch: "e1" });
});

test("the browser's online event reconnects at once instead of waiting out the backoff", async (t) => {
  const target = new EventTarget();
  globalThis.addEventListener = target.addEventListener.bind(target);
  globalThis.removeEventListener = target.removeEventListener.bind(target);
  t.after(() => {
    delete globalThis.addEventListener;
    delete globalThis.removeEventListener;
  });
  const { server, client } = await setup(t, { client: { minReconnectDelay: 60_000, maxReconnectDelay: 60_000 } });
  await connected(client);
  const disconnected = nextEvent(client, "state", (s) => s.newState === "disconnected");
  server.last.drop();
  await disconnected;
  target.dispatchEvent(new Event("online"));
  await until(() => server.connections.length === 2 && client.state === "connected");
});

test("pagehide closes the socket cleanly and pageshow reconnects", async (t) => {
  const win = new EventTarget();
  globalThis.window = win;
  t.after(() => {
    delete globalThis.window;
  });
  const { server, client } = await setup(t);
  const got = [];
  client.subscribe("news", (event) => got.push(event.offset));
  await nextEvent(client, "subscribed");
  win.dispatchEvent(new Event("pagehide"));
  await until(() => server.connections[0].closeCode !== undefined);
  assert.equal(server.connections[0].closeCode, 1000);
  assert.equal(client.state, "disconnected");
  server.publish("news", "a", 1);
  await settle(100);
  assert.equal(server.connections.length, 1);
  win.dispatchEvent(new Event("pageshow"));
  await until(() => got.length === 1);
  assert.deepEqual(got, [1]);
});

test("a refused auth (today's server: forbidden) is reported and public subscriptions go on", async (t) => {
  const { server, client } = await setup(t, {
    client: { token: "tok" },
    server: {
      onFrame: (conn, frame) => {
        if (frame.op !== "auth") return false;
        conn.send({ type: "error", code: "forbidden", message: "token authentication is not enabled", ref: frame.ref });
        return true;
      },
    },
  });
  const errors = [];
  client.on("error", (error) => errors.push(error));
  const got = [];
  client.subscribe("news", (event) => got.push(event.offset));
  await nextEvent(client, "subscribed");
  server.publish("news", "a", 1);
  await until(() => got.length === 1);
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, "forbidden");
  assert.match(errors[0].message, /^authentication refused/);
  assert.equal(client.state, "connected");
});

// -- token refresh ---------------------------------------------------------------------------
// Tokens that expire 2 s after they are made are refreshed 1 s after they arrive (half the time
// left; see refreshDelay in codes.test.js). The waits below are generous safety nets.

/** A token function returning JWTs for user 42 that expire `seconds` from now: t1, t2, ... */
function shortTokens(seconds = 2) {
  const issued = [];
  const fn = () => {
    const token = fakeJwt({ sub: "42", exp: Date.now() / 1000 + seconds, n: issued.length + 1 });
    issued.push(token);
    return token;
  };
  return { fn, issued };
}

// They run concurrently (each has its own fake server and client): each waits for real
// refresh timers, of at least 1 s.
describe("token refresh", { concurrency: true }, () => {
  it("a token from a function is refreshed before its exp, on the same connection, again and again", async (t) => {
    const tokens = shortTokens();
    const authenticated = [];
    const { server, client } = await setup(t, {
      client: { token: tokens.fn },
      listen: (client) => client.on("authenticated", (info) => authenticated.push(info)),
    });
    const got = [];
    client.subscribe("news", (event) => got.push(event.offset));
    await until(() => server.last?.refreshes.length >= 2, { timeout: 15_000, message: "two refreshes" });
    server.publish("news", "a", 1);
    await until(() => got.length === 1);
    assert.equal(server.connections.length, 1);
    assert.equal(client.state, "connected");
    assert.deepEqual(server.last.frames.filter((f) => f.op === "auth").map((f) => f.token), [tokens.issued[0]]);
    // Each refresh sends the token the function returned at that moment, with a ref.
    assert.deepEqual(server.last.refreshes.slice(0, 2), tokens.issued.slice(1, 3));
    const refreshFrames = server.last.frames.filter((f) => f.op === "refresh");
    assert.ok(refreshFrames.every((f) => f.ref !== undefined));
    assert.deepEqual(authenticated.slice(0, 3), [
      { user: "42", refreshed: false },
      { user: "42", refreshed: true },
      { user: "42", refreshed: true },
    ]);
    assert.equal(client.user, "42");
  });

  it("a refused refresh (token_expired, invalid_token, forbidden) falls back to reconnecting with a fresh token", async (t) => {
    const codes = ["token_expired", "invalid_token", "forbidden"];
    const tokens = shortTokens();
    const { server, client } = await setup(t, {
      client: { token: tokens.fn },
      server: {
        onFrame: (conn, frame) => {
          if (frame.op !== "refresh" || conn.index >= codes.length) return false;
          conn.send({ type: "error", code: codes[conn.index], message: "refused", ref: frame.ref });
          return true;
        },
      },
    });
    const errors = [];
    client.on("error", (error) => errors.push(error));
    const got = [];
    client.subscribe("news", (event) => got.push(event.offset));
    await nextEvent(client, "subscribed");
    server.publish("news", "a", 1);
    await until(() => got.length === 1);
    await until(() => server.connections.length === 4 && server.last.refreshes.length === 1, {
      timeout: 30_000,
      message: "three refused refreshes, then a fourth connection whose refresh is accepted",
    });
    assert.deepEqual(errors.map((e) => e.code), codes);
    assert.ok(errors.every((e) => /^token refresh refused/.test(e.message)));
    for (const conn of server.connections.slice(0, 3)) {
      await until(() => conn.closeCode !== undefined);
      assert.equal(conn.closeCode, 4001); // closed by the client, as for an expired token
    }
    // Every connection authenticated with a token the function had just returned, never a stale one.
    const authTokens = server.connections.map((conn) => conn.frames.find((f) => f.op === "auth").token);
    assert.equal(new Set(authTokens).size, 4);
    assert.ok(authTokens.every((token) => tokens.issued.includes(token)));
    // ...and resumed its subscription where the previous one stopped.
    for (const conn of server.connections.slice(1)) {
      assert.deepEqual(conn.frames.find((f) => f.op === "subscribe").since, { offset: 1, epoch: "e1" });
    }
    server.publish("news", "b", 2);
    await until(() => got.length === 2);
    assert.deepEqual(got, [1, 2]);
  });

  it("a token function that fails at refresh time is reported and asked again", async (t) => {
    let calls = 0;
    const token = () => {
      calls += 1;
      if (calls === 2) throw new Error("token endpoint down");
      return fakeJwt({ sub: "42", exp: Date.now() / 1000 + (calls === 1 ? 2 : 3600), n: calls });
    };
    const { server, client } = await setup(t, { client: { token } });
    const error = await nextEvent(client, "error", () => true, { timeout: 15_000 });
    assert.equal(error.code, "token_unavailable");
    await until(() => server.last.refreshes.length === 1, { timeout: 15_000, message: "the retried refresh" });
    assert.equal(calls, 3);
    assert.equal(server.connections.length, 1);
    assert.equal(client.state, "connected");
  });

  it("a token function that returns the token it gave before is asked again later, without sending it", async (t) => {
    const cached = fakeJwt({ sub: "42", exp: Date.now() / 1000 + 2.5 });
    const fresh = fakeJwt({ sub: "42", exp: Date.now() / 1000 + 3600 });
    let calls = 0;
    const { server, client } = await setup(t, { client: { token: () => (++calls <= 2 ? cached : fresh) } });
    await until(() => server.last?.refreshes.length === 1, { timeout: 15_000, message: "the refresh with the renewed token" });
    assert.equal(calls, 3);
    assert.deepEqual(server.last.refreshes, [fresh]);
    assert.equal(server.connections.length, 1);
    assert.equal(client.state, "connected");
  });

  it("opaque tokens, static strings and tokens the function does not renew are not refreshed", async (t) => {
    const opaque = await setup(t, { client: { token: () => "opaque-session-token" } });
    const fixed = await setup(t, { client: { token: fakeJwt({ sub: "42", exp: Date.now() / 1000 + 2 }) } });
    let calls = 0;
    const nulls = await setup(t, {
      client: { token: () => (++calls === 1 ? fakeJwt({ sub: "42", exp: Date.now() / 1000 + 2 }) : null) },
    });
    for (const { client } of [opaque, fixed, nulls]) await until(() => client.user === "42");
    await until(() => calls === 2, { timeout: 15_000, message: "the token function asked at refresh time" });
    await settle(1500); // longer than any refresh delay these tokens could get
    for (const { server, client } of [opaque, fixed, nulls]) {
      assert.equal(server.connections.length, 1);
      assert.deepEqual(server.last.refreshes, []);
      assert.equal(client.state, "connected");
    }
    assert.equal(calls, 2);
  });

  it("a refresh left unanswered when the connection drops does not carry over to the next one", async (t) => {
    const tokens = shortTokens();
    const { server, client } = await setup(t, {
      client: { token: tokens.fn },
      server: { onFrame: (conn, frame) => frame.op === "refresh" && conn.index === 0 }, // never answered
    });
    await until(() => server.connections[0]?.frames.some((f) => f.op === "refresh"), { timeout: 15_000, message: "a refresh" });
    server.connections[0].drop();
    await until(() => server.connections.length === 2 && client.state === "connected");
    await until(() => server.last.refreshes.length === 1, { timeout: 15_000, message: "a refresh on the new connection" });
    assert.equal(server.last.frames.find((f) => f.op === "auth").token, tokens.issued[2]);
  });
});

// -- presence --------------------------------------------------------------------------------

test("join and leave frames reach the presence event and the channel's onPresence handlers", async (t) => {
  const { server, client } = await setup(t);
  const all = [];
  const lobby = [];
  const other = [];
  client.on("presence", (presence) => all.push(presence));
  client.on("error", () => {});
  client.subscribe("chat:lobby", () => {}, { onPresence: (p) => lobby.push(p) });
  client.subscribe("chat:lobby", () => {}, {
    onPresence: () => {
      throw new Error("a broken handler does not stop the others");
    },
  });
  client.subscribe("chat:other", () => {}, { onPresence: (p) => other.push(p) });
  client.subscribe("news", () => {}); // no onPresence: fine
  await until(() => server.last?.subscriptions.size === 3);
  const handlerError = nextEvent(client, "error", (e) => e.code === "handler_error");
  server.presence("chat:lobby", "join", "42");
  server.presence("chat:other", "join", "7");
  server.presence("chat:lobby", "leave", "43");
  server.last.send({ type: "join", channel: "chat:elsewhere", user: "9" }); // not subscribed: ignored
  await until(() => all.length === 3);
  assert.deepEqual(all, [
    { type: "join", channel: "chat:lobby", user: "42" },
    { type: "join", channel: "chat:other", user: "7" },
    { type: "leave", channel: "chat:lobby", user: "43" },
  ]);
  assert.deepEqual(lobby, [all[0], all[2]]);
  assert.deepEqual(other, [all[1]]);
  assert.equal((await handlerError).channel, "chat:lobby");
});

test("after unsubscribe, presence frames of that channel are no longer delivered", async (t) => {
  const { server, client } = await setup(t);
  const seen = [];
  client.on("presence", (p) => seen.push(p.channel));
  const sub = client.subscribe("chat:lobby", () => {}, { onPresence: (p) => seen.push(`sub:${p.channel}`) });
  client.subscribe("chat:other", () => {});
  await until(() => server.last?.subscriptions.size === 2);
  sub.unsubscribe();
  await until(() => server.last.subscriptions.size === 1);
  server.last.send({ type: "join", channel: "chat:lobby", user: "42" }); // late, from before the unsubscribe
  server.presence("chat:other", "join", "42");
  await until(() => seen.length >= 1);
  await settle(50);
  assert.deepEqual(seen, ["chat:other"]);
});
