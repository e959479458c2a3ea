// Web Push in the browser: the service worker's show and click logic (notifier-sw.js, run in a
// VM context standing in for a ServiceWorkerGlobalScope) and client.push's subscribe flow
// (against fake browser APIs and a recording fetch).

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import vm from "node:vm";

import { NotifierClient, NotifierError } from "../notifier.js";

const SW_SOURCE = readFileSync(new URL("../notifier-sw.js", import.meta.url), "utf8");

/** A service worker scope with recording registration and clients; `dispatch` fires an event. */
function serviceWorker(windows = []) {
  const listeners = {};
  const shown = [];
  const opened = [];
  const focused = [];
  const scope = {
    URL,
    registration: {
      scope: "https://app.example/",
      showNotification: async (title, options) => shown.push({ title, options }),
    },
    clients: {
      matchAll: async () => windows.map((url) => ({ url, focus: async () => focused.push(url) })),
      openWindow: async (url) => opened.push(url),
    },
    addEventListener: (name, fn) => (listeners[name] = fn),
  };
  scope.self = scope;
  vm.runInNewContext(SW_SOURCE, scope);
  async function dispatch(name, event) {
    const waits = [];
    listeners[name]({ ...event, waitUntil: (promise) => waits.push(promise) });
    await Promise.all(waits);
  }
  return { dispatch, shown, opened, focused };
}

const pushData = (payload) => ({ json: () => JSON.parse(payload), text: () => payload });

test("a push is shown with its title, body, icon, and the event id as its tag", async () => {
  const sw = serviceWorker();
  const payload = { title: "Shipped", body: "On its way", url: "/o/7", icon: "/i.png", tag: null, id: "e1", channel: "user:7", event: "order" };
  await sw.dispatch("push", { data: pushData(JSON.stringify(payload)) });
  assert.equal(sw.shown.length, 1);
  const { title, options } = sw.shown[0];
  assert.equal(title, "Shipped");
  assert.equal(options.body, "On its way");
  assert.equal(options.icon, "/i.png");
  assert.equal(options.tag, "e1");
  assert.deepEqual({ ...options.data }, { url: "/o/7", id: "e1", channel: "user:7", event: "order" });
});

test("a publisher's tag wins; a push that is not notifier's JSON is still shown", async () => {
  const sw = serviceWorker();
  await sw.dispatch("push", { data: pushData(JSON.stringify({ title: "T", body: "B", tag: "thread-9", id: "e2" })) });
  await sw.dispatch("push", { data: pushData("plain words") });
  await sw.dispatch("push", { data: null });
  assert.equal(sw.shown[0].options.tag, "thread-9");
  assert.equal(sw.shown[1].title, "New notification");
  assert.equal(sw.shown[1].options.body, "plain words");
  assert.equal(sw.shown[2].title, "New notification");
});

test("a click focuses the tab already at the url, else opens it", async () => {
  const sw = serviceWorker(["https://app.example/o/7"]);
  let closed = 0;
  const click = (url) => ({ notification: { data: { url }, close: () => closed++ } });
  await sw.dispatch("notificationclick", click("/o/7"));
  await sw.dispatch("notificationclick", click("/o/8"));
  await sw.dispatch("notificationclick", click(null));
  assert.deepEqual(sw.focused, ["https://app.example/o/7"]);
  assert.deepEqual(sw.opened, ["https://app.example/o/8", "https://app.example/"]);
  assert.equal(closed, 3);
});

// client.push

const SERVER_KEY = "BAItlNZy75vFY9b7x3xNarNdPs0l7zlCsRoBbONuq9BNXQ2nBlERFwoS_lITU2cfeegdcZbCq45vtCq7psaxVig";

function keyBytes(text) {
  return Uint8Array.from(Buffer.from(text, "base64url"));
}

/** Fake Notification, PushManager and service worker container on globalThis, undone after. */
function browser(t, { permission = "default", grant = "granted", existing = null } = {}) {
  const calls = { requested: 0, subscribed: [], unsubscribed: 0 };
  const makeSubscription = (endpoint, key) => ({
    endpoint,
    options: { applicationServerKey: key.buffer },
    toJSON: () => ({ endpoint, keys: { p256dh: "p", auth: "a" } }),
    unsubscribe: async () => {
      calls.unsubscribed++;
      current = null;
      return true;
    },
  });
  let current = existing ? makeSubscription(existing.endpoint, existing.key) : null;
  const registration = {
    pushManager: {
      getSubscription: async () => current,
      subscribe: async (options) => {
        calls.subscribed.push(options);
        current = makeSubscription("https://push.example/new", options.applicationServerKey);
        return current;
      },
    },
  };
  const saved = { Notification: globalThis.Notification, PushManager: globalThis.PushManager, navigator: globalThis.navigator };
  const Notification = { permission, requestPermission: async () => (calls.requested++, (Notification.permission = grant)) };
  Object.defineProperty(globalThis, "navigator", { value: { serviceWorker: { ready: Promise.resolve(registration), register: async () => registration } }, configurable: true });
  globalThis.Notification = Notification;
  globalThis.PushManager = function PushManager() {};
  t.after(() => {
    Object.defineProperty(globalThis, "navigator", { value: saved.navigator, configurable: true });
    globalThis.Notification = saved.Notification;
    globalThis.PushManager = saved.PushManager;
  });
  return calls;
}

function api(answers) {
  const calls = [];
  const fetchImpl = async (url, init) => {
    calls.push({ method: init.method, path: new URL(url).pathname, body: init.body && JSON.parse(init.body), auth: init.headers.Authorization });
    const [status, body] = answers[`${init.method} ${new URL(url).pathname}`] ?? [404, { code: "not_found" }];
    return new Response(status === 204 ? null : JSON.stringify(body), { status });
  };
  return { calls, fetch: fetchImpl };
}

/** A socket that never opens: these tests use only the HTTP API. */
class IdleSocket {
  constructor() {
    this.readyState = 0;
  }
  addEventListener() {}
  removeEventListener() {}
  send() {}
  close() {}
}

let clients = [];
test.afterEach(() => {
  for (const c of clients) c.close();
  clients = [];
});

function client(fetchImpl) {
  const made = new NotifierClient("wss://rt.example/ws/", { token: "tok", fetch: fetchImpl, WebSocket: IdleSocket });
  clients.push(made);
  return made;
}

test("enable asks once, subscribes with the service's key and registers the subscription", async (t) => {
  const calls = browser(t);
  const http = api({ "GET /api/push/key": [200, { public_key: SERVER_KEY }], "POST /api/push/subscriptions": [201, { id: 4 }] });
  const done = await client(http.fetch).push.enable();
  assert.deepEqual(done, { id: 4, endpoint: "https://push.example/new" });
  assert.equal(calls.requested, 1);
  assert.equal(calls.subscribed.length, 1);
  assert.equal(calls.subscribed[0].userVisibleOnly, true);
  assert.deepEqual([...calls.subscribed[0].applicationServerKey], [...keyBytes(SERVER_KEY)]);
  assert.deepEqual(http.calls.map((c) => `${c.method} ${c.path}`), ["GET /api/push/key", "POST /api/push/subscriptions"]);
  assert.deepEqual(http.calls[1].body, { endpoint: "https://push.example/new", keys: { p256dh: "p", auth: "a" } });
  assert.equal(http.calls[1].auth, "Bearer tok");
});

test("a subscription made with another key is replaced; one with this key is reused", async (t) => {
  const other = Uint8Array.from(keyBytes(SERVER_KEY)).map((b) => b ^ 1);
  const calls = browser(t, { permission: "granted", existing: { endpoint: "https://push.example/old", key: other } });
  const http = api({ "GET /api/push/key": [200, { public_key: SERVER_KEY }], "POST /api/push/subscriptions": [201, { id: 5 }] });
  const push = client(http.fetch).push;
  assert.equal((await push.enable()).endpoint, "https://push.example/new");
  assert.equal(calls.unsubscribed, 1);
  assert.equal((await push.enable()).endpoint, "https://push.example/new");  // the same key: kept
  assert.equal(calls.subscribed.length, 1);
  assert.equal(calls.requested, 0);  // granted already
});

test("denied or unsupported is a NotifierError with a stable code", async (t) => {
  browser(t, { grant: "denied" });
  const http = api({});
  await assert.rejects(client(http.fetch).push.enable(), (err) => err instanceof NotifierError && err.code === "push_denied");
  globalThis.PushManager = undefined;
  await assert.rejects(client(http.fetch).push.enable(), (err) => err instanceof NotifierError && err.code === "push_unsupported");
  assert.equal(await client(http.fetch).push.state(), "unsupported");
});

test("state follows permission and subscription; disable forgets it on both sides", async (t) => {
  browser(t, { permission: "granted", existing: { endpoint: "https://push.example/old", key: keyBytes(SERVER_KEY) } });
  const http = api({
    "GET /api/push/subscriptions": [200, { subscriptions: [{ id: 9, endpoint: "https://push.example/old" }, { id: 10, endpoint: "https://push.example/phone" }] }],
    "DELETE /api/push/subscriptions/9": [204, null],
  });
  const push = client(http.fetch).push;
  assert.equal(await push.state(), "subscribed");
  assert.equal(await push.disable(), true);
  assert.deepEqual(http.calls.map((c) => `${c.method} ${c.path}`), ["GET /api/push/subscriptions", "DELETE /api/push/subscriptions/9"]);
  assert.equal(await push.state(), "unsubscribed");
  assert.equal(await push.disable(), false);
  globalThis.Notification.permission = "default";
  assert.equal(await push.state(), "prompt");
  globalThis.Notification.permission = "denied";
  assert.equal(await push.state(), "denied");
});
