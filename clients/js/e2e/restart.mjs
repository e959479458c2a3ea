// End to end across a server restart: the test (tests/test_js_client.py) publishes E2E_COUNT
// events to E2E_CHANNEL through another server process while it stops and restarts the one
// this client is connected to. The client must reconnect on its own, resubscribe with `since`
// = the last offset it had, and hand every event to the handler exactly once, in order.
//
// Env: NOTIFIER_WS, E2E_CHANNEL, E2E_COUNT. Prints {"ready": true} once subscribed, then
// {"received": n} per event, then {"result": {...}}.

import assert from "node:assert/strict";

import { WebSocket } from "ws";

import { NotifierClient } from "../notifier.js";
import { deadline, env, report, waitFor } from "./lib.mjs";

const WS = env("NOTIFIER_WS");
const CHANNEL = env("E2E_CHANNEL");
const COUNT = Number(env("E2E_COUNT"));

/** @type {number[]} offsets, in the order the handler was called */
const offsets = [];
/** @type {string[]} */
const states = [];
/** @type {{recovered: boolean, offset: number}[]} */
const subscriptions = [];
/** @type {Record<string, unknown>[]} subscribe frames the client sent */
const subscribeFrames = [];
/** @type {unknown[]} */
const closes = [];
/** @type {string[]} */
const errors = [];
deadline(90_000, () => ({ received: offsets.length, states, subscribeFrames }));

// The real `ws` socket, recording what the client sends and how each connection ended.
class RecordingWebSocket extends WebSocket {
  /** @param {string} url */
  constructor(url) {
    super(url);
    this.addEventListener("close", (event) => closes.push(event.code));
  }

  /** @param {any} data */
  send(data) {
    const frame = JSON.parse(String(data));
    if (frame.op === "subscribe") subscribeFrames.push(frame);
    super.send(data);
  }
}

const client = new NotifierClient(WS, {
  WebSocket: /** @type {any} */ (RecordingWebSocket),
  minReconnectDelay: 100,
  maxReconnectDelay: 1000,
});
client.on("state", ({ newState }) => states.push(newState));
client.on("error", (error) => errors.push(`${error.code}: ${error.message}`));
client.on("subscribed", ({ recovered, offset }) => {
  subscriptions.push({ recovered, offset });
  if (subscriptions.length === 1) report({ ready: true });
});
client.subscribe(CHANNEL, (event) => {
  offsets.push(event.offset);
  report({ received: offsets.length, offset: event.offset });
});

await waitFor(() => offsets.length >= COUNT, `${COUNT} events`, 80_000);
client.close();

const expected = Array.from({ length: COUNT }, (_, i) => i + 1);
assert.deepEqual(offsets, expected, "every event exactly once, in order");
const connected = states.filter((s) => s === "connected").length;
assert.ok(connected >= 2, `the client reconnected (states: ${states.join(" ")})`);
assert.ok(subscriptions.length >= 2, "it resubscribed after the restart");
assert.ok(subscriptions.every((s) => s.recovered), JSON.stringify(subscriptions));
// The resubscribe asked for what came after the last offset it had.
const resumed = subscribeFrames.slice(1).map((frame) => /** @type {any} */ (frame.since)?.offset);
assert.ok(resumed.length >= 1 && resumed.every((o) => typeof o === "number" && o >= 1), JSON.stringify(subscribeFrames));
report({ result: { count: offsets.length, states, subscriptions, resumedAfter: resumed, closes, errors } });
