// End to end against a real server: an event published over HTTP reaches the handlers of a
// NotifierClient (Node, `ws`), with the offset, id and epoch of the publish answer; and on a
// chat: channel, client.publish() reaches another client while a public channel refuses it.
//
// Env: NOTIFIER_WS, NOTIFIER_HTTP, NOTIFIER_API_KEY, E2E_CHANNEL, E2E_ROOM.

import assert from "node:assert/strict";

import { WebSocket } from "ws";

import { NotifierClient } from "../notifier.js";
import { deadline, env, notify, report, waitFor } from "./lib.mjs";

const WS = env("NOTIFIER_WS");
const HTTP = env("NOTIFIER_HTTP");
const KEY = env("NOTIFIER_API_KEY");
const CHANNEL = env("E2E_CHANNEL");
const CHAT = `chat:${env("E2E_ROOM")}`;

/** @type {string[]} */
const errors = [];
/** @type {string[]} */
const states = [];
/** @type {import("../notifier.js").EventFrame[]} */
const first = [];
/** @type {import("../notifier.js").EventFrame[]} */
const second = [];
deadline(60_000, () => ({ states, errors, first: first.length }));

/**
 * @param {NotifierClient} client
 * @param {string} channel
 * @returns {Promise<import("../notifier.js").SubscribedInfo>}
 */
function subscribed(client, channel) {
  return new Promise((resolve) => {
    /** @param {import("../notifier.js").SubscribedInfo} info */
    const listener = (info) => {
      if (info.channel !== channel) return;
      client.off("subscribed", listener);
      resolve(info);
    };
    client.on("subscribed", listener);
  });
}

const client = new NotifierClient(WS, { WebSocket });
client.on("state", ({ newState }) => states.push(newState));
client.on("error", (error) => errors.push(`${error.code}: ${error.message}`));

// 1. HTTP publish -> handler called, once per subscription, with the whole event frame.
const ready = subscribed(client, CHANNEL);
client.subscribe(CHANNEL, (event) => first.push(event));
client.subscribe(CHANNEL, (event) => second.push(event)); // shares the server subscription
const info = await ready;
assert.equal(info.recovered, true);
assert.equal(info.offset, 0, "a fresh channel starts at offset 0");
assert.equal(client.state, "connected");

const answer = await notify(HTTP, KEY, { channel: CHANNEL, event: "order.shipped", data: { order: 7, items: ["a", "b"] } });
assert.equal(answer.status, 202, JSON.stringify(answer.body));
const position = answer.body.channels[CHANNEL];
await waitFor(() => first.length >= 1 && second.length >= 1, "the event in both handlers");
const [event] = first;
assert.equal(event.type, "event");
assert.equal(event.channel, CHANNEL);
assert.equal(event.offset, position.offset);
assert.equal(event.offset, 1);
assert.equal(event.epoch, position.epoch);
assert.equal(event.id, answer.body.id);
assert.equal(event.event, "order.shipped");
assert.deepEqual(event.data, { order: 7, items: ["a", "b"] });
assert.equal(typeof event.ts, "number");
assert.deepEqual(second, first, "both subscriptions got the same frame");

// 2. Client publishing on a chat: channel reaches another client, and is refused elsewhere.
const other = new NotifierClient(WS, { WebSocket });
/** @type {import("../notifier.js").EventFrame[]} */
const chat = [];
const otherReady = subscribed(other, CHAT);
other.subscribe(CHAT, (e) => chat.push(e));
await otherReady;
const published = await client.publish(CHAT, "message", { name: "node", text: "hello" });
assert.equal(published.type, "published");
assert.equal(published.channel, CHAT);
assert.equal(published.offset, 1);
await waitFor(() => chat.length >= 1, "the chat message at the other client");
assert.equal(chat[0].id, published.id);
assert.equal(chat[0].offset, 1);
assert.deepEqual(chat[0].data, { name: "node", text: "hello" });
await assert.rejects(client.publish(CHANNEL, "nope", {}), (/** @type {any} */ error) => error.code === "forbidden");

client.close();
other.close();
assert.equal(client.state, "closed");
assert.deepEqual(first.length, 1, "nothing else arrived");
assert.deepEqual(errors, []);
report({ result: { states, event, published: { offset: published.offset, id: published.id } } });
