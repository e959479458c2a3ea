// A minimal Node `ws` broadcast server: the load generator's ceiling.
//
//   node ceiling.mjs PORT
//
// WebSocket clients on ws://127.0.0.1:PORT/ get {"type":"subscribed"} and then the frames
// POSTed to /publish (one per line), encoded once and written to each socket in one write. POST /api/notify answers 202 at
// once, to show how many requests per second the HTTP load generator can make.
import http from "node:http";
import { Sender, WebSocket, WebSocketServer } from "ws";

const port = Number(process.argv[2]);
const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (chunk) => chunks.push(chunk));
  req.on("end", () => {
    if (req.url === "/publish") {
      // One or more frames, one per line: each WebSocket frame is built once, and each socket
      // gets all of them in one write (the fastest a server can do this).
      const frames = Buffer.concat(chunks).toString().split("\n").filter(Boolean);
      const wire = Buffer.concat(
        frames.flatMap((text) =>
          Sender.frame(Buffer.from(text), { fin: true, opcode: 1, mask: false, readOnly: false, rsv1: false }),
        ),
      );
      for (const ws of wss.clients) if (ws.readyState === WebSocket.OPEN) ws._socket.write(wire);
      res.writeHead(202, { "Content-Type": "application/json" });
      res.end("{}");
    } else if (req.url === "/api/notify") {
      res.writeHead(202, { "Content-Type": "application/json" });
      res.end('{"id":"0123456789abcdef0123456789abcdef","channels":{}}');
    } else {
      res.writeHead(200, { "Content-Type": "application/json" });
      res.end('{"status":"ok"}');
    }
  });
});
const wss = new WebSocketServer({ server, perMessageDeflate: false, backlog: 4096 });
wss.on("connection", (ws) => {
  ws.on("error", () => {});
  ws.send('{"type":"subscribed","channel":"bench"}');
});
server.listen(port, "127.0.0.1", 4096, () => process.stdout.write(`listening ${port}\n`));
// Bounded: the runner stops it, and it stops by itself after 15 minutes in any case.
setTimeout(() => process.exit(0), 15 * 60 * 1000).unref();
process.on("SIGTERM", () => process.exit(0));
