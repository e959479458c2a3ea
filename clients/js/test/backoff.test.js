// The reconnect backoff resets only after a stable connection (its bounds: client.test.js).

import assert from "node:assert/strict";
import { test } from "node:test";
import { WebSocket } from "ws";

import { NotifierClient } from "../notifier.js";
import { FakeServer, until } from "../testing/fake-server.js";

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
