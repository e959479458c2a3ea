// The reconnect backoff: its bounds (pure function) and its reset only after a stable connection.

import assert from "node:assert/strict";
import { test } from "node:test";
import { WebSocket } from "ws";

import { backoff, NotifierClient } from "../notifier.js";
import { FakeServer, until } from "../testing/fake-server.js";

test("backoff stays within [min, min * 2^(step+1)) and never above max", () => {
  for (let step = 0; step < 12; step++) {
    const low = backoff(step, 500, 20_000, () => 0);
    const high = backoff(step, 500, 20_000, () => 0.999999);
    assert.equal(low, 500);
    assert.ok(high <= 20_000 && high <= 500 + 500 * 2 ** step, `step ${step}: ${high}`);
  }
  assert.equal(backoff(30, 500, 20_000, () => 0.999999), 20_000);
});

test("the backoff grows over quick drops and resets only once a connection stayed up", async (t) => {
  const server = await FakeServer.start();
  const client = new NotifierClient(server.url, {
    WebSocket: /** @type {any} */ (WebSocket),
    minReconnectDelay: 5,
    maxReconnectDelay: 20,
    stableAfter: 1_000,
  });
  t.after(async () => {
    client.close();
    await server.stop();
  });
  const internals = /** @type {any} */ (client);
  for (let drops = 1; drops <= 3; drops++) {
    await until(() => server.connections.length === drops && client.state === "connected");
    server.last.drop(); // before stableAfter: this connection does not count as stable
    await until(() => internals._step === drops, { message: `step ${drops}` });
  }
  await until(() => server.connections.length === 4 && client.state === "connected");
  assert.ok(internals._step >= 3, "the step must not reset as soon as a connection opens");
  await until(() => internals._step === 0, { message: "the step resets after stableAfter" });
});
