// NotifierClient against an in-process fake server (testing/fake-server.js) on `ws`.
// Waits poll for a condition with a generous safety timeout; nothing asserts on timing.

import assert from "node:assert/strict";
import { test } from "node:test";
import { WebSocket } from "ws";

import { NotifierClient, NotifierError } from "../notifier.js";
import { FakeServer, nextEvent, settle, until } from "../testing/fake-server.js";

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
