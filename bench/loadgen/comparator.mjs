// What the Node comparator servers (ceiling.mjs, personal.mjs) share: their JSON answers and a
// bounded life on 127.0.0.1.
import crypto from "node:crypto";
import http from "node:http";

/** What notifier answers a POST /api/notify with, in shape. */
export const NOTIFY_ANSWER = '{"id":"0123456789abcdef0123456789abcdef","channels":{}}';

/** An HS256 JWT of `claims`, signed with `secret` (the load generator's connection tokens too). */
export function hs256(claims, secret) {
  const enc = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const head = `${enc({ alg: "HS256", typ: "JWT" })}.${enc(claims)}`;
  return `${head}.${crypto.createHmac("sha256", secret).update(head).digest("base64url")}`;
}

export function answer(res, status, body) {
  res.writeHead(status, { "Content-Type": "application/json" });
  res.end(body);
}

/** An HTTP server that hands each request's whole body to `handle(req, res, body)`. */
export function bodyServer(handle) {
  return http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (chunk) => chunks.push(chunk));
    req.on("end", () => handle(req, res, Buffer.concat(chunks)));
  });
}

/** Listen on 127.0.0.1:`port`; the runner stops it, and it stops by itself after
 * COMPARATOR_MAX_SECS (15 minutes unless the runner says longer, as the soak does). */
export function serve(server, port) {
  server.listen(port, "127.0.0.1", 4096, () => process.stdout.write(`listening ${port}\n`));
  setTimeout(() => process.exit(0), Number(process.env.COMPARATOR_MAX_SECS ?? 900) * 1000).unref();
  process.on("SIGTERM", () => process.exit(0));
}
