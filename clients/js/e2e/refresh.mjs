// End to end: token refresh against a real server whose tokens are short-lived. The client's
// token function mints 3 s tokens (HS256 with NOTIFIER_JWT_SECRET, as a non-Python backend
// would); the server (NOTIFIER_TOKEN_GRACE_SECS=1, NOTIFIER_HEARTBEAT_SECS=1) closes a
// connection whose token has expired with 4001 within a few seconds of `exp`. The client must
// stay on its first connection well past the first token's expiry thanks to `refresh`, and
// its handler must get every event published to `user:<id>` meanwhile, exactly once, in order.
// A second client with the same kind of token as a plain string (which cannot be renewed) shows
// that the server does end expired connections here: it is closed with 4001.
//
// Env: NOTIFIER_WS, NOTIFIER_HTTP, NOTIFIER_API_KEY, NOTIFIER_JWT_SECRET, E2E_USER.
// Prints {"ready": true}, then {"result": {...}}.

import assert from "node:assert/strict";
import { createHmac } from "node:crypto";

import { WebSocket } from "ws";

import { NotifierClient } from "../notifier.js";
import { deadline, env, notify, report, waitFor } from "./lib.mjs";

const WS = env("NOTIFIER_WS");
const HTTP = env("NOTIFIER_HTTP");
const KEY = env("NOTIFIER_API_KEY");
const SECRET = env("NOTIFIER_JWT_SECRET");
const USER = env("E2E_USER");
const CHANNEL = `user:${USER}`;
const TOKEN_SECS = 3;
// Stay connected this long past the first token's `exp`: more than the server's grace (1 s)
// plus two of its heartbeats (1 s), at which it would have closed the connection.
const OUTLIVE_SECS = 5;

/**
 * A connection token, signed as any backend can (docs/security.md).
 * @param {string} sub
 * @param {number} expiresIn seconds
 */
function mint(sub, expiresIn) {
  const part = (/** @type {unknown} */ value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const exp = Math.floor(Date.now() / 1000) + expiresIn;
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub, exp })}`;
  return { token: `${body}.${createHmac("sha256", SECRET).update(body).digest("base64url")}`, exp };
}

/** @type {number[]} */
const exps = [];
/** @type {number[]} */
const offsets = [];
/** @type {string[]} */
const states = [];
/** @type {string[]} */
const errors = [];
/** @type {{user: string | null, refreshed: boolean}[]} */
const authenticated = [];
/** @type {string[]} every frame the client sent, by op */
const sent = [];
/** @type {number[]} */
const closes = [];
let sockets = 0;
let published = 0;
deadline(90_000, () => ({ received: offsets.length, published, states, authenticated, errors, closes }));

// The real `ws` socket, recording what the client sends and how each connection ended.
class RecordingWebSocket extends WebSocket {
  /** @param {string} url */
  constructor(url) {
    super(url);
    sockets += 1;
    this.addEventListener("close", (event) => closes.push(event.code));
  }

  /** @param {any} data */
  send(data) {
    sent.push(JSON.parse(String(data)).op);
    super.send(data);
  }
}

const client = new NotifierClient(WS, {
  WebSocket: /** @type {any} */ (RecordingWebSocket),
  token: async () => {
    const { token, exp } = mint(USER, TOKEN_SECS);
    exps.push(exp);
    return token;
  },
});
client.on("state", ({ newState }) => states.push(newState));
client.on("error", (error) => errors.push(`${error.code}: ${error.message}`));
client.on("authenticated", (info) => authenticated.push(info));
client.subscribe(CHANNEL, (event) => offsets.push(event.offset));

// The control: the same token as a string. It cannot be renewed, so the server ends it.
/** @type {(string | number)[]} */
const controlErrors = [];
const control = new NotifierClient(WS, { WebSocket: /** @type {any} */ (WebSocket), token: mint(USER, TOKEN_SECS).token });
control.on("error", (error) => controlErrors.push(error.code));

await waitFor(() => client.user === USER && client.state === "connected", "the client authenticated as E2E_USER");
const connectionId = client.connectionId;
const firstExp = exps[0];
report({ ready: true });

// Publish one event after another (each answered before the next) until the first token is
// long expired and several refreshes went through; a closed connection ends it at once (and
// fails the checks below).
const refreshes = () => authenticated.filter((a) => a.refreshed).length;
const enough = () => Date.now() / 1000 >= firstExp + OUTLIVE_SECS && refreshes() >= 3 && control.state === "closed";
while (!enough() && closes.length === 0 && Date.now() / 1000 < firstExp + 60) {
  const { status, body } = await notify(HTTP, KEY, { user: USER, event: "tick", data: { n: published + 1 } });
  assert.equal(status, 202, JSON.stringify(body));
  published += 1;
  assert.equal(body.channels[CHANNEL].offset, published, JSON.stringify(body));
  await new Promise((resolve) => setTimeout(resolve, 100)); // pacing, not an assertion
}
await waitFor(() => offsets.length >= published, `${published} events`);
const stillConnected = client.state === "connected" && client.connectionId === connectionId;
const outlivedSecs = Date.now() / 1000 - firstExp;
client.close();
control.close();

assert.deepEqual(
  offsets,
  Array.from({ length: published }, (_, i) => i + 1),
  "every event exactly once, in order",
);
assert.ok(stillConnected, `still on the first connection (states: ${states.join(" ")})`);
assert.equal(sockets, 1, "one socket: no reconnect");
assert.deepEqual(states, ["connecting", "connected", "closed"]);
assert.deepEqual(closes, [], "the server closed nothing");
assert.equal(sent.filter((op) => op === "auth").length, 1);
assert.ok(sent.filter((op) => op === "refresh").length >= 3, sent.join(" "));
assert.deepEqual(errors, []);
assert.ok(authenticated.every((a) => a.user === USER), JSON.stringify(authenticated));
assert.deepEqual(controlErrors, [4001], "the control client's string token expired: closed with 4001");
report({
  result: {
    count: offsets.length,
    refreshes: refreshes(),
    tokens: exps.length,
    outlivedSecs,
    states,
    sent: sent.filter((op) => op === "auth" || op === "refresh"),
    controlErrors,
  },
});
