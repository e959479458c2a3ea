// A Node `ws` server routing each event to one user's sockets through Redis, as
// bench/raw_asgi.py does: the personal-channel comparator of `bench/run.py --only personal`.
//
//   RAW_REDIS_URL=redis://127.0.0.1:6379/0 node personal.mjs PORT
//
// ws://127.0.0.1:PORT/?user=<id> is subscribed to that user's events at once. POST /api/notify
// with {"user", "event", "data"} PUBLISHes "<user> <frame>" (a notifier-like event frame) on
// Redis; the one subscriber connection writes each frame to that user's sockets. POST /api/tokens
// with {"user"} mints an HS256 JWT for it (201 {"token", "expires_at"}), as bench/raw_asgi.py does.
import { createClient } from "@redis/client";
import { WebSocket, WebSocketServer } from "ws";
import { NOTIFY_ANSWER, answer, bodyServer, hs256, serve } from "./comparator.mjs";

const SECRET = "raw-bench-secret-long-enough-for-hs256";
// This process's own pub/sub channel (only its POST /api/notify publishes to it): servers side by
// side on one Redis (the soak) must not read each other's events.
const CHANNEL = `raw-bench-personal-node-${process.pid}`;
const port = Number(process.argv[2]);
const url = process.env.RAW_REDIS_URL ?? "redis://127.0.0.1:6379/0";
const publisher = createClient({ url });
const subscriber = publisher.duplicate();
const byUser = new Map(); // user -> Set of sockets
await Promise.all([publisher.connect(), subscriber.connect()]);
await subscriber.subscribe(CHANNEL, (message) => {
  const space = message.indexOf(" ");
  const frame = message.slice(space + 1);
  for (const ws of byUser.get(message.slice(0, space)) ?? []) if (ws.readyState === WebSocket.OPEN) ws.send(frame);
});

const server = bodyServer(async (req, res, body) => {
  if (req.method === "POST" && req.url === "/api/notify") {
    const parsed = JSON.parse(body.toString());
    const frame = JSON.stringify({ type: "event", channel: `user:${parsed.user}`, offset: 0, ...parsed });
    await publisher.publish(CHANNEL, `${parsed.user} ${frame}`);
    answer(res, 202, NOTIFY_ANSWER);
  } else if (req.method === "POST" && req.url === "/api/tokens") {
    const expiresAt = Math.floor(Date.now() / 1000) + 3600;
    const token = hs256({ sub: JSON.parse(body.toString()).user, exp: expiresAt }, SECRET);
    answer(res, 201, JSON.stringify({ token, expires_at: expiresAt }));
  } else {
    answer(res, 200, '{"status":"ok"}');
  }
});
const wss = new WebSocketServer({ server, perMessageDeflate: false, backlog: 4096 });
wss.on("connection", (ws, req) => {
  const user = new URL(req.url, "http://x").searchParams.get("user") ?? "";
  if (!byUser.has(user)) byUser.set(user, new Set());
  byUser.get(user).add(ws);
  ws.on("error", () => {});
  ws.on("close", () => byUser.get(user)?.delete(ws));
  ws.send('{"type":"subscribed","channel":"bench"}');
});
serve(server, port);
