// client.inbox: its HTTP requests (with the socket's token, against the API base derived from
// the socket URL) through a recording fake fetch, and its change feed from `inbox.changed` on
// the user's channel of a fake server.

import assert from "node:assert/strict";
import { test } from "node:test";
import { WebSocket } from "ws";

import { NotifierClient, NotifierError } from "../notifier.js";
import { FakeServer, until } from "../testing/fake-server.js";

/** A fetch that records its calls and answers from `answers` (status and JSON body). */
function recordingFetch(answers = {}) {
  /** @type {{url: string, method: string, headers: Record<string, string>, body: any}[]} */
  const calls = [];
  const fetchImpl = async (/** @type {URL} */ url, /** @type {any} */ init) => {
    calls.push({ url: String(url), method: init.method, headers: init.headers, body: init.body && JSON.parse(init.body) });
    const [status, body] = answers[`${init.method} ${new URL(url).pathname}`] ?? [200, {}];
    return new Response(status === 204 ? null : JSON.stringify(body), { status });
  };
  return { calls, fetch: /** @type {typeof fetch} */ (fetchImpl) };
}

async function setup(t, fetchImpl, options = {}) {
  const server = await FakeServer.start();
  const client = new NotifierClient(server.url, {
    WebSocket: /** @type {any} */ (WebSocket),
    token: "tok-1",
    fetch: fetchImpl,
    ...options,
  });
  t.after(async () => {
    client.close();
    await server.stop();
  });
  return { server, client };
}

test("the API base comes from the socket URL, or the apiBase option", () => {
  const base = (url, options = {}) => {
    const client = new NotifierClient(url, { WebSocket: /** @type {any} */ (WebSocket), ...options });
    client.close(); // before its first connect
    return client.apiBase;
  };
  assert.equal(base("wss://example.com/ws/"), "https://example.com/api/");
  assert.equal(base("ws://h:8000/notifier/ws/"), "http://h:8000/notifier/api/");
  assert.equal(base("ws://h/ws/", { apiBase: "https://api.example.com/v1" }), "https://api.example.com/v1/");
});

test("list, counts, mark, markAll and remove send the token and the documented bodies", async (t) => {
  const counts = { unread: 1, unseen: 1, total: 2 };
  const { calls, fetch } = recordingFetch({
    "GET /api/inbox": [200, { notifications: [], next: null, counts }],
    "GET /api/inbox/counts": [200, counts],
    "POST /api/inbox/mark": [200, { updated: 1, counts }],
    "DELETE /api/inbox/abc": [204, null],
  });
  const { client } = await setup(t, fetch);
  assert.deepEqual((await client.inbox.list({ status: "unread", limit: 5, cursor: null })).counts, counts);
  assert.deepEqual(await client.inbox.counts(), counts);
  assert.equal((await client.inbox.mark(["abc"], "read")).updated, 1);
  await client.inbox.markAll("archived", { category: "orders" });
  assert.equal(await client.inbox.remove("abc"), undefined);
  assert.deepEqual(
    calls.map((c) => [c.method, c.url.replace(/^ws:\/\/|^http:\/\/[^/]+/, "")]),
    [
      ["GET", "/api/inbox?status=unread&limit=5"],
      ["GET", "/api/inbox/counts"],
      ["POST", "/api/inbox/mark"],
      ["POST", "/api/inbox/mark"],
      ["DELETE", "/api/inbox/abc"],
    ],
  );
  assert.ok(calls.every((c) => c.headers.Authorization === "Bearer tok-1"));
  assert.deepEqual(calls[2].body, { ids: ["abc"], as: "read" });
  assert.deepEqual(calls[3].body, { all: true, as: "archived", category: "orders" });
});

test("an error answer rejects with the server's code", async (t) => {
  const { fetch } = recordingFetch({
    "POST /api/inbox/mark": [400, { code: "invalid", message: "as: not a valid choice", details: { fields: {} } }],
  });
  const { client } = await setup(t, fetch);
  await assert.rejects(client.inbox.mark(["x"], /** @type {any} */ ("eaten")), (error) => {
    assert.ok(error instanceof NotifierError);
    assert.equal(error.code, "invalid");
    return true;
  });
});

test("on('change') follows inbox.changed on the user's channel, and nothing else", async (t) => {
  const { fetch } = recordingFetch();
  const { server, client } = await setup(t, fetch);
  /** @type {any[]} */
  const changes = [];
  client.inbox.on("change", (change) => changes.push(change));
  await until(() => server.last?.subscriptions.has("user:42"), { message: "subscribed to user:42" });
  const change = { action: "marked", ids: ["a"], all: false, as: "read", counts: { unread: 0, unseen: 0, total: 1 } };
  server.publish("user:42", "order.shipped", { n: 1 });
  server.publish("user:42", "inbox.changed", change);
  await until(() => changes.length === 1, { message: "one change" });
  assert.deepEqual(changes, [change]);
});
