// A minimal Node `ws` broadcast server: the load generator's ceiling.
//
//   node ceiling.mjs PORT
//
// WebSocket clients on ws://127.0.0.1:PORT/ get {"type":"subscribed"} and then the frames
// POSTed to /publish (one per line), encoded once and written to each socket in one write. POST /api/notify answers 202 at
// once, to show how many requests per second the HTTP load generator can make.
import { Sender, WebSocket, WebSocketServer } from "ws";
import { NOTIFY_ANSWER, answer, bodyServer, serve } from "./comparator.mjs";

const port = Number(process.argv[2]);
const server = bodyServer((req, res, body) => {
  if (req.url === "/publish") {
    // One or more frames, one per line: each WebSocket frame is built once, and each socket
    // gets all of them in one write (the fastest a server can do this).
    const frames = body.toString().split("\n").filter(Boolean);
    const wire = Buffer.concat(
      frames.flatMap((text) =>
        Sender.frame(Buffer.from(text), { fin: true, opcode: 1, mask: false, readOnly: false, rsv1: false }),
      ),
    );
    for (const ws of wss.clients) if (ws.readyState === WebSocket.OPEN) ws._socket.write(wire);
    answer(res, 202, "{}");
  } else if (req.url === "/api/notify") {
    answer(res, 202, NOTIFY_ANSWER);
  } else {
    answer(res, 200, '{"status":"ok"}');
  }
});
const wss = new WebSocketServer({ server, perMessageDeflate: false, backlog: 4096 });
wss.on("connection", (ws) => {
  ws.on("error", () => {});
  ws.send('{"type":"subscribed","channel":"bench"}');
});
serve(server, port);
