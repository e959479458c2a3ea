// The load generator of `make bench`: WebSocket subscribers and publishers, loopback only.
//
//   node loadgen.mjs '<json config>'
//
// It prints JSON lines on stdout: {"ready": ...} once its sockets are subscribed (where the
// mode waits for the runner), then one {"result": ...}. Every loop is bounded by an event count
// and a deadline, so it always stops by itself.
//
// Modes (config.mode):
//   fanout   N subscribers on one channel; publish events either in a closed loop (a window of
//            `window` events in flight: the next one goes out when the oldest has reached every
//            subscriber, "as fast as they are absorbed") or at `rate` events/s (latency). Reports
//            frames/s, publish->receive latency, lost / duplicated / out-of-order frames.
//   hold     N subscribers that stay connected until stdin closes (idle memory).
//   count    N subscribers that wait for `expect` events published by someone else (Celery).
//   recover  N sockets that subscribe at once with `since` and receive the replay (recovery).
//   http     POST load with `concurrency` requests in flight for `seconds` (publish API, or with
//            kind "tokens" POST /api/tokens), plus optional subscribers that check every
//            acknowledged event arrives exactly once.
//
//   personal N sockets, one user each; events to random users by POST, at a rate or closed loop.
//
// Events are recognised without JSON.parse: every event frame carries "data":{"s":<seq>}.

import http from "node:http";
import net from "node:net";
import { performance } from "node:perf_hooks";
import WebSocket from "ws";
import { hs256 } from "./comparator.mjs";

const config = JSON.parse(process.argv[2] || "{}");
const now = () => performance.now();
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const EVENT_PREFIX = Buffer.from('{"type":"event"');
const PING = Buffer.from('{"type":"ping"}');
const SUBSCRIBED = Buffer.from('{"type":"subscribed"');
const SEQ_KEY = Buffer.from('"data":{"s":');
const OFFSET_KEY = Buffer.from('"offset":');
const TS_KEY = Buffer.from('"ts":');

/** The frame's "ts" (Unix seconds with a fraction, set when publish() ran) in milliseconds. */
function tsMillis(buf) {
  const at = buf.lastIndexOf(TS_KEY);
  if (at < 0) return -1;
  let end = at + TS_KEY.length;
  while (end < buf.length && ((buf[end] >= 48 && buf[end] <= 57) || buf[end] === 46)) end++;
  return Number(buf.toString("latin1", at + TS_KEY.length, end)) * 1000;
}

function numberAfter(buf, key) {
  const at = buf.indexOf(key);
  if (at < 0) return -1;
  let n = 0;
  for (let i = at + key.length; i < buf.length; i++) {
    const c = buf[i];
    if (c < 48 || c > 57) break;
    n = n * 10 + (c - 48);
  }
  return n;
}

function startsWith(buf, prefix) {
  return buf.length >= prefix.length && buf.compare(prefix, 0, prefix.length, 0, prefix.length) === 0;
}

// -- latency histogram: 0.05 ms buckets up to 60 s ------------------------------------------
class Histogram {
  constructor() {
    this.buckets = new Uint32Array(1_200_000);
    this.count = 0;
    this.max = 0;
  }
  add(ms) {
    const b = Math.min(this.buckets.length - 1, Math.max(0, Math.floor(ms * 20)));
    this.buckets[b]++;
    this.count++;
    if (ms > this.max) this.max = ms;
  }
  quantile(q) {
    if (this.count === 0) return null;
    const target = Math.ceil(this.count * q);
    let seen = 0;
    for (let b = 0; b < this.buckets.length; b++) {
      seen += this.buckets[b];
      if (seen >= target) return (b + 1) / 20;
    }
    return this.max;
  }
  summary() {
    return {
      samples: this.count,
      p50_ms: this.quantile(0.5),
      p99_ms: this.quantile(0.99),
      max_ms: this.count ? this.max : null,
    };
  }
}

// -- subscribers -------------------------------------------------------------------------------
class Subscribers {
  /** N sockets spread over `urls`; each records the sequence numbers it receives. */
  constructor({ urls, count, protocol, channel, deflate, maxSeq, onEvent, since }) {
    this.urls = urls;
    this.count = count;
    this.protocol = protocol; // "notifier" (subscribe op, offsets) or "raw" (subscribed on connect)
    this.channel = channel;
    this.deflate = !!deflate;
    this.maxSeq = maxSeq;
    this.onEvent = onEvent || (() => {});
    this.onFrame = null; // (seq, data) for every event frame, when set
    this.since = since || null;
    this.sockets = [];
    this.seen = []; // per socket: Uint8Array over seq numbers (saturating counts)
    this.lastOffset = new Float64Array(count).fill(-1);
    this.received = 0;
    this.outOfOrder = 0;
    this.connectErrors = 0;
    this.closedEarly = 0;
    this.closeCodes = {};
    this.closing = false;
  }

  async connect({ concurrency = 200, subscribe = true, timeoutMs = 120_000 } = {}) {
    const started = now();
    let next = 0;
    const worker = async () => {
      while (next < this.count) {
        const i = next++;
        try {
          await this.open(i, subscribe, timeoutMs);
        } catch (err) {
          this.connectErrors++;
          if (this.connectErrors <= 3) process.stderr.write(`connect ${i}: ${err.message}\n`);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, this.count) }, worker));
    return (now() - started) / 1000;
  }

  open(i, subscribe, timeoutMs) {
    return new Promise((resolve, reject) => {
      const url = this.urls[i % this.urls.length];
      const ws = new WebSocket(url, { perMessageDeflate: this.deflate, handshakeTimeout: timeoutMs });
      this.sockets[i] = ws;
      this.seen[i] = new Uint8Array(this.maxSeq + 1);
      let ready = false;
      const timer = setTimeout(() => {
        if (!ready) {
          ws.terminate();
          reject(new Error("not subscribed in time"));
        }
      }, timeoutMs);
      ws.on("open", () => {
        if (this.protocol === "notifier" && subscribe) {
          ws.send(JSON.stringify({ op: "subscribe", channel: this.channel }));
        } else if (this.protocol === "notifier") {
          ready = true;
          clearTimeout(timer);
          resolve();
        }
      });
      ws.on("message", (data) => {
        if (startsWith(data, EVENT_PREFIX)) {
          this.frame(i, data);
        } else if (startsWith(data, PING)) {
          ws.send('{"op":"pong"}');
        } else if (!ready && startsWith(data, SUBSCRIBED)) {
          ready = true;
          clearTimeout(timer);
          resolve();
        }
      });
      ws.on("error", (err) => {
        if (!ready) {
          clearTimeout(timer);
          reject(err);
        }
      });
      ws.on("close", (code) => {
        this.closeCodes[code] = (this.closeCodes[code] || 0) + 1;
        if (!this.closing) this.closedEarly++;
        if (!ready) {
          clearTimeout(timer);
          reject(new Error(`closed ${code} before subscribed`));
        }
      });
    });
  }

  frame(i, data) {
    this.received++;
    const seq = numberAfter(data, SEQ_KEY);
    if (this.protocol === "notifier") {
      const offset = numberAfter(data, OFFSET_KEY);
      const last = this.lastOffset[i];
      if (last >= 0 && offset !== last + 1) this.outOfOrder++;
      this.lastOffset[i] = offset;
    }
    if (this.onFrame !== null) this.onFrame(seq, data);
    if (seq >= 0 && seq <= this.maxSeq) {
      const seen = this.seen[i];
      if (seen[seq] < 255) seen[seq]++;
      if (seen[seq] === 1) this.onEvent(seq);
    }
  }

  /** Send every socket a subscribe with `since` at once (recovery). */
  subscribeAll(since) {
    const frame = JSON.stringify({ op: "subscribe", channel: this.channel, since });
    for (const ws of this.sockets) if (ws && ws.readyState === WebSocket.OPEN) ws.send(frame);
  }

  /** Lost and duplicated frames over the sequence numbers in [from, to]. */
  audit(from, to) {
    let lost = 0;
    let duplicated = 0;
    for (let i = 0; i < this.count; i++) {
      const seen = this.seen[i];
      if (!seen) continue;
      for (let s = from; s <= to; s++) {
        if (seen[s] === 0) lost++;
        else if (seen[s] > 1) duplicated += seen[s] - 1;
      }
    }
    return { lost, duplicated, out_of_order: this.outOfOrder };
  }

  async close() {
    this.closing = true;
    const open = this.sockets.filter((ws) => ws && ws.readyState === WebSocket.OPEN);
    const closed = Promise.all(
      open.map((ws) => new Promise((resolve) => (ws.once("close", resolve), setTimeout(resolve, 5000)))),
    );
    for (const ws of open) ws.close(1000);
    await closed;
  }

  stats() {
    return {
      subscribers: this.count,
      connect_errors: this.connectErrors,
      closed_early: this.closedEarly,
      close_codes: this.closeCodes,
    };
  }
}

// -- publishers --------------------------------------------------------------------------------
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });

function post(url, body, headers = {}) {
  return new Promise((resolve) => {
    const payload = Buffer.from(body);
    const req = http.request(
      url,
      {
        method: "POST",
        agent,
        headers: { "Content-Type": "application/json", "Content-Length": payload.length, ...headers },
      },
      (res) => {
        const chunks = [];
        res.on("data", (chunk) => chunks.push(chunk));
        res.on("end", () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
      },
    );
    req.on("error", (err) => resolve({ status: 0, body: String(err) }));
    req.end(payload);
  });
}

const EVENT_ID = "0123456789abcdef0123456789abcdef";

/** A frame shaped like notifier's, for the servers that broadcast what they are given. */
function rawFrame(channel, seq) {
  const ts = (Date.now() / 1000).toFixed(3);
  return `{"type":"event","channel":"${channel}","offset":${seq},"epoch":"00000000","id":"${EVENT_ID}","event":"bench","data":{"s":${seq}},"ts":${ts}}`;
}

class RedisPublisher {
  /** PUBLISH over a bare RESP connection (the raw ASGI app listens on Redis pub/sub). */
  constructor(port, channel) {
    this.channel = channel;
    this.sock = net.connect(port, "127.0.0.1");
    this.sock.setNoDelay(true);
    this.sock.on("data", () => {});
    this.ready = new Promise((resolve, reject) => {
      this.sock.once("connect", resolve);
      this.sock.once("error", reject);
    });
  }
  publish(seq) {
    const frame = rawFrame("bench", seq);
    const parts = ["PUBLISH", this.channel, frame];
    let out = `*${parts.length}\r\n`;
    for (const p of parts) out += `$${Buffer.byteLength(p)}\r\n${p}\r\n`;
    this.sock.write(out);
    return Promise.resolve(true);
  }
  publishMany(first, last) {
    for (let seq = first; seq <= last; seq++) this.publish(seq);
    return Promise.resolve(true);
  }
  close() {
    this.sock.end();
  }
}

class HttpPublisher {
  /** notifier's POST /api/notify, or a plain POST of the frame (the Node ceiling server). */
  constructor(spec) {
    this.spec = spec;
    this.errors = 0;
    this.statuses = {};
  }
  async publish(seq) {
    const { kind, url, key, channel } = this.spec;
    const res =
      kind === "notify"
        ? await post(url, JSON.stringify({ channel, event: "bench", data: { s: seq } }), {
            Authorization: `Bearer ${key}`,
          })
        : await post(url, rawFrame("bench", seq));
    this.statuses[res.status] = (this.statuses[res.status] || 0) + 1;
    if (res.status !== 202 && res.status !== 200) {
      this.errors++;
      if (this.errors <= 3) process.stderr.write(`publish ${seq}: ${res.status} ${res.body.slice(0, 200)}\n`);
      return false;
    }
    return true;
  }
  async publishMany(first, last) {
    const { kind, url, key, channel } = this.spec;
    if (kind === "http") {
      const frames = [];
      for (let seq = first; seq <= last; seq++) frames.push(rawFrame("bench", seq));
      const res = await post(url, frames.join("\n"));
      return res.status === 202;
    }
    if (kind !== "notify" || first === last) {
      for (let seq = first; seq <= last; seq++) await this.publish(seq);
      return true;
    }
    const events = [];
    for (let seq = first; seq <= last; seq++) events.push({ channel, event: "bench", data: { s: seq } });
    const res = await post(url.replace(/\/api\/notify$/, "/api/notify/batch"), JSON.stringify({ events }), {
      Authorization: `Bearer ${key}`,
    });
    this.statuses[res.status] = (this.statuses[res.status] || 0) + 1;
    if (res.status !== 202) {
      this.errors++;
      if (this.errors <= 3) process.stderr.write(`publish ${first}-${last}: ${res.status} ${res.body.slice(0, 200)}\n`);
      return false;
    }
    return true;
  }
  close() {}
}

function makePublisher(spec) {
  return spec.kind === "redis" ? new RedisPublisher(spec.port, spec.channel) : new HttpPublisher(spec);
}

// -- modes -------------------------------------------------------------------------------------
async function fanout() {
  const n = config.subscribers;
  const warmup = config.warmup ?? 5;
  const events = config.events;
  const total = warmup + events;
  const counts = new Uint32Array(total + 1);
  const pubTime = new Float64Array(total + 1);
  const hist = new Histogram();
  let complete = 0; // every seq <= complete has reached every subscriber
  let wake = null;
  const subs = new Subscribers({
    urls: config.ws,
    count: n,
    protocol: config.protocol,
    channel: config.channel,
    deflate: config.deflate,
    maxSeq: total,
    onEvent: (seq) => {
      if (seq > warmup) hist.add(now() - pubTime[seq]);
      if (++counts[seq] === n) {
        while (complete < total && counts[complete + 1] === n) complete++;
        if (wake) wake();
      }
    },
  });
  // publish() -> receive, from the event's own "ts" (wall clock, millisecond resolution): the
  // fan-out's share of the latency, without the publish request in front of it.
  const tsHist = new Histogram();
  if (config.rate) subs.onFrame = (seq, data) => seq > warmup && tsHist.add(Math.max(0, Date.now() - tsMillis(data)));
  const connectSecs = await subs.connect({ concurrency: config.connect_concurrency ?? 200 });
  emit({ ready: { connect_secs: connectSecs, ...subs.stats() } });
  if (subs.connectErrors) {
    await subs.close();
    return { connect_secs: connectSecs, ...subs.stats(), error: "connect errors" };
  }
  const publisher = makePublisher(config.publish);
  if (publisher.ready) await publisher.ready;
  await sleep(config.settle_ms ?? 300);

  const deadline = now() + (config.max_secs ?? 120) * 1000;
  const stallMs = (config.stall_secs ?? 15) * 1000;
  const cpuBefore = process.cpuUsage();
  const cpuWall = now();
  let published = 0;
  let measureStart = 0;
  let lastProgress = now();
  let lastComplete = 0;
  let stalled = false;
  const waitProgress = (ms) =>
    new Promise((resolve) => {
      const t = setTimeout(() => ((wake = null), resolve()), ms);
      wake = () => (clearTimeout(t), (wake = null), resolve());
    });

  if (config.rate) {
    // Open loop at a fixed rate: latency, not throughput.
    const interval = 1000 / config.rate;
    const t0 = now();
    for (let seq = 1; seq <= total; seq++) {
      const due = t0 + (seq - 1) * interval;
      const wait = due - now();
      if (wait > 0) await sleep(wait);
      if (seq === warmup + 1) measureStart = now();
      pubTime[seq] = now();
      publisher.publish(seq); // not awaited: the rate is the schedule's
      published = seq;
      if (now() > deadline) break;
    }
  } else {
    // Closed loop: whenever at most half the window is in flight, top it up in one go (one
    // batch POST, or one pipelined burst of PUBLISHes), so the publisher is never the limit.
    // `burst` events go out together (one batch POST, or one pipelined burst of PUBLISHes)
    // whenever that many fit in the window; burst 1 publishes one event at a time.
    const window = config.window ?? 4;
    const burst = Math.min(window, config.burst ?? Math.max(1, Math.floor(window / 2)));
    const inflight = new Set();
    while (published < total && now() < deadline) {
      while (published < total && window - (published - complete) >= burst) {
        const first = published + 1;
        const last = Math.min(total, first + burst - 1);
        if (first <= warmup + 1 && last >= warmup + 1) measureStart = now();
        for (let seq = first; seq <= last; seq++) pubTime[seq] = now();
        const p = (first === last ? publisher.publish(first) : publisher.publishMany(first, last)).finally(() =>
          inflight.delete(p),
        );
        inflight.add(p);
        published = last;
      }
      await waitProgress(50);
      if (complete !== lastComplete) {
        lastComplete = complete;
        lastProgress = now();
      } else if (now() - lastProgress > stallMs) {
        stalled = true;
        break;
      }
    }
    await Promise.all(inflight);
  }
  // Drain: wait until every published event reached everyone, or progress stops.
  lastProgress = now();
  let lastReceived = subs.received;
  while (complete < published && now() < deadline) {
    await waitProgress(100);
    if (subs.received !== lastReceived) {
      lastReceived = subs.received;
      lastProgress = now();
    } else if (now() - lastProgress > stallMs) {
      stalled = true;
      break;
    }
  }
  const end = now();
  const cpuUsed = process.cpuUsage(cpuBefore);
  const measured = Math.max(0, Math.min(published, complete) - warmup);
  const elapsed = (end - measureStart) / 1000;
  const audit = subs.audit(1, published);
  publisher.close();
  await subs.close();
  return {
    connect_secs: connectSecs,
    events: published - warmup,
    warmup,
    seconds: elapsed,
    frames: measured * n,
    frames_per_sec: elapsed > 0 ? (measured * n) / elapsed : 0,
    events_per_sec: elapsed > 0 ? measured / elapsed : 0,
    latency: hist.summary(),
    latency_from_publish: tsHist.summary(),
    // The load generator's CPU while publishing and receiving (one core = 100).
    cpu_percent: ((cpuUsed.user + cpuUsed.system) / 1000 / (end - cpuWall)) * 100,
    stalled,
    publish_errors: publisher.errors ?? 0,
    ...audit,
    ...subs.stats(),
  };
}

async function waitStdinEnd() {
  await new Promise((resolve) => {
    process.stdin.on("data", () => {});
    process.stdin.on("end", resolve);
    process.stdin.on("close", resolve);
    process.stdin.resume();
  });
}

async function hold() {
  const subs = new Subscribers({
    urls: config.ws,
    count: config.subscribers,
    protocol: config.protocol,
    channel: config.channel,
    deflate: config.deflate,
    maxSeq: 0,
  });
  const connectSecs = await subs.connect({ concurrency: config.connect_concurrency ?? 200 });
  emit({ ready: { connect_secs: connectSecs, ...subs.stats() } });
  await Promise.race([waitStdinEnd(), sleep((config.max_secs ?? 300) * 1000)]);
  const stillOpen = subs.sockets.filter((ws) => ws && ws.readyState === WebSocket.OPEN).length;
  await subs.close();
  return { connect_secs: connectSecs, still_open: stillOpen, lost: 0, duplicated: 0, ...subs.stats() };
}

async function count() {
  const expect = config.expect;
  let done = 0;
  let first = 0;
  let last = 0;
  const perSeq = new Uint32Array(expect + 1);
  const subs = new Subscribers({
    urls: config.ws,
    count: config.subscribers,
    protocol: config.protocol ?? "notifier",
    channel: config.channel,
    maxSeq: expect,
    onEvent: (seq) => {
      const t = now();
      if (!first) first = t;
      last = t;
      if (++perSeq[seq] === config.subscribers) done++;
    },
  });
  const connectSecs = await subs.connect();
  emit({ ready: { connect_secs: connectSecs, ...subs.stats() } });
  const deadline = now() + (config.max_secs ?? 120) * 1000;
  let lastReceived = -1;
  let lastProgress = now();
  const stallMs = (config.stall_secs ?? 20) * 1000;
  while (done < expect && now() < deadline) {
    await sleep(100);
    if (subs.received !== lastReceived) {
      lastReceived = subs.received;
      lastProgress = now();
    } else if (first && now() - lastProgress > stallMs) break;
  }
  const audit = subs.audit(1, expect);
  await subs.close();
  const seconds = (last - first) / 1000;
  return {
    connect_secs: connectSecs,
    expected: expect,
    complete_events: done,
    seconds,
    events_per_sec: seconds > 0 ? (done - 1) / seconds : 0,
    ...audit,
    ...subs.stats(),
  };
}

async function recover() {
  const expect = config.expect;
  let done = 0;
  let finished = 0;
  const perSocket = new Uint32Array(config.subscribers);
  const subs = new Subscribers({
    urls: config.ws,
    count: config.subscribers,
    protocol: "notifier",
    channel: config.channel,
    maxSeq: expect,
    onEvent: () => {
      done++;
    },
  });
  const connectSecs = await subs.connect({ subscribe: false });
  emit({ ready: { connect_secs: connectSecs, ...subs.stats() } });
  const t0 = now();
  subs.subscribeAll(config.since);
  const deadline = t0 + (config.max_secs ?? 120) * 1000;
  const target = expect * config.subscribers;
  let lastDone = -1;
  let lastProgress = now();
  while (done < target && now() < deadline) {
    await sleep(20);
    if (done !== lastDone) {
      lastDone = done;
      lastProgress = now();
      finished = now();
    } else if (now() - lastProgress > 15_000) break;
  }
  void perSocket;
  const seconds = ((finished || now()) - t0) / 1000;
  const audit = subs.audit(1, expect);
  await subs.close();
  return {
    connect_secs: connectSecs,
    replayed: done,
    expected: target,
    seconds,
    replayed_per_sec: seconds > 0 ? done / seconds : 0,
    ...audit,
    ...subs.stats(),
  };
}

async function httpLoad() {
  const { url, key, kind, channel, concurrency, seconds } = config;
  const batch = config.batch ?? 0;
  const eventsPerRequest = batch || 1;
  const maxSeq = config.max_events ?? 2_000_000;
  const subscriberCount = config.subscribers ?? 0;
  const subs = subscriberCount
    ? new Subscribers({ urls: config.ws, count: subscriberCount, protocol: "notifier", channel, maxSeq })
    : null;
  if (subs) await subs.connect();
  emit({ ready: { subscribers: subscriberCount } });
  const hist = new Histogram();
  const statuses = {};
  let seq = 0;
  let ok = 0;
  let okEvents = 0;
  let acked = [];
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  // `users`: each event goes to one of that many users (`user: "u<n>"`), not to `channel`;
  // `inbox`: and is stored in their inbox.
  const event = () => {
    const s = ++seq;
    const target = config.users ? { user: `u${s % config.users}` } : { channel };
    return { ...target, event: "bench", data: { s }, ...(config.inbox ? { inbox: true } : {}) };
  };
  const body = () => {
    if (kind === "raw") return rawFrame("bench", ++seq);
    if (kind === "tokens") return JSON.stringify({ user: `u${++seq % 100000}` }); // POST /api/tokens
    if (batch) {
      const events = [];
      for (let i = 0; i < batch; i++) events.push(event());
      return JSON.stringify({ events });
    }
    return JSON.stringify(event());
  };
  const started = now();
  const stopAt = started + seconds * 1000;
  const worker = async () => {
    while (now() < stopAt && seq + eventsPerRequest <= maxSeq) {
      const first = seq + 1;
      const t = now();
      const res = await post(url, body(), headers);
      hist.add(now() - t);
      statuses[res.status] = (statuses[res.status] || 0) + 1;
      if (res.status === 202 || res.status === 200 || res.status === 201) {
        ok++;
        okEvents += eventsPerRequest;
        if (subs) acked.push([first, first + eventsPerRequest - 1]);
      } else if (Object.values(statuses).reduce((a, b) => a + b, 0) - ok <= 3) {
        process.stderr.write(`POST ${res.status}: ${res.body.slice(0, 300)}\n`);
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const elapsed = (now() - started) / 1000;
  let audit = { lost: 0, duplicated: 0, out_of_order: 0 };
  if (subs) {
    // Every acknowledged event must reach every subscriber exactly once.
    const deadline = now() + 30_000;
    while (subs.received < okEvents * subscriberCount && now() < deadline) await sleep(50);
    await sleep(200);
    audit = { lost: 0, duplicated: 0, out_of_order: subs.outOfOrder };
    for (const [a, b] of acked) {
      const part = subs.audit(a, b);
      audit.lost += part.lost;
      audit.duplicated += part.duplicated;
    }
    // Anything received that was never acknowledged counts as duplicated too.
    audit.unacknowledged_received = Math.max(0, subs.received - okEvents * subscriberCount - audit.duplicated);
    await subs.close();
  }
  return {
    requests: ok,
    errors: Object.entries(statuses)
      .filter(([s]) => s !== "202" && s !== "200" && s !== "201")
      .reduce((a, [, c]) => a + c, 0),
    statuses,
    seconds: elapsed,
    requests_per_sec: ok / elapsed,
    events_per_sec: okEvents / elapsed,
    latency: hist.summary(),
    ...audit,
    ...(subs ? subs.stats() : {}),
  };
}

// -- personal channels: one socket per user, each event to one user ---------------------------

/** An HS256 JWT for `user` (notifier's connection token), signed with `secret`. */
function connectionToken(user, secret) {
  return hs256({ sub: user, exp: Math.floor(Date.now() / 1000) + 3600 }, secret);
}

async function personal() {
  // `users` sockets, socket i for user u<i> (notifier: a connection token, then a subscribe to
  // user:u<i>; raw: ?user=u<i>, routed by the server). Events go by POST to random users, at
  // `rate` events/s, or as fast as acknowledged with `window` in flight (the next event goes
  // out when one has reached its user). Latency is from the POST to the frame at its socket.
  // `ws` and `post` may be lists (several server processes): socket i goes to ws[i % n], and
  // the POSTs take the servers in turn.
  const { users, kind, key, secret } = config;
  const wsUrls = [config.ws].flat();
  const postUrls = [config.post].flat();
  let posted = 0;
  const seconds = config.seconds ?? 10;
  const maxSeq = config.max_events ?? 2_000_000;
  const sockets = new Array(users);
  const seen = new Uint8Array(maxSeq + 1);
  const target = new Int32Array(maxSeq + 1).fill(-1);
  const sentAt = new Float64Array(maxSeq + 1);
  const hist = new Histogram();
  let received = 0;
  let misrouted = 0;
  let connectErrors = 0;
  let onArrive = () => {};
  // With `storm` or `churn`, each notifier socket's last position ({offset, epoch}, from its
  // subscribed reply and events), so that it comes back with `since` as a client does.
  const positions = new Array(users).fill(null);
  const resumes = config.storm || config.churn;
  const open = (i) =>
    new Promise((resolve, reject) => {
      const ws = wsUrls[i % wsUrls.length];
      const url = kind !== "notifier" ? `${ws}?user=u${i}` : `${ws}?token=${connectionToken(`u${i}`, secret)}`;
      const sock = new WebSocket(url, { perMessageDeflate: false });
      sockets[i] = sock;
      const timer = setTimeout(() => (sock.terminate(), reject(new Error("not subscribed in time"))), 120_000);
      sock.on("open", () => {
        if (kind !== "notifier") return;
        const since = positions[i] ? { since: positions[i] } : {};
        sock.send(JSON.stringify({ op: "subscribe", channel: `user:u${i}`, ...since }));
      });
      const track = (data) => {
        if (!resumes || kind !== "notifier") return;
        const { offset, epoch } = JSON.parse(data.toString());
        positions[i] = { offset, epoch };
      };
      sock.on("message", (data) => {
        if (startsWith(data, EVENT_PREFIX)) {
          const s = numberAfter(data, SEQ_KEY);
          if (s < 0 || s > maxSeq) return;
          if (target[s] !== i) misrouted++;
          received++;
          if (seen[s] < 255) seen[s]++;
          if (seen[s] === 1) {
            hist.add(now() - sentAt[s]);
            onArrive();
          }
          track(data);
        } else if (startsWith(data, PING)) {
          sock.send('{"op":"pong"}');
        } else if (startsWith(data, SUBSCRIBED)) {
          track(data);
          clearTimeout(timer);
          resolve();
        }
      });
      sock.on("error", (err) => (clearTimeout(timer), reject(err)));
    });
  let connectErrorsNow = 0;
  const openAll = async () => {
    let next = 0;
    await Promise.all(
      Array.from({ length: Math.min(200, users) }, async () => {
        while (next < users) {
          const i = next++;
          await open(i).catch((err) => {
            connectErrorsNow++;
            if (connectErrorsNow <= 3) process.stderr.write(`connect u${i}: ${err.message}\n`);
          });
        }
      }),
    );
  };
  const connectStarted = now();
  await openAll();
  connectErrors = connectErrorsNow;
  const connectSecs = (now() - connectStarted) / 1000;
  emit({ ready: { users, connect_errors: connectErrors, connect_seconds: connectSecs } });
  // Idle, connected and subscribed, while the runner reads the server's memory.
  if (config.pause_secs) await sleep(config.pause_secs * 1000);
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  let seq = 0;
  let acked = 0;
  let refused = 0;
  const send = async () => {
    const s = ++seq;
    const user = Math.floor(Math.random() * users);
    target[s] = user;
    sentAt[s] = now();
    const postUrl = postUrls[posted++ % postUrls.length];
    const res = await post(postUrl, JSON.stringify({ user: `u${user}`, event: "bench", data: { s } }), headers);
    if (res.status === 202) acked++;
    else if (++refused <= 3) process.stderr.write(`POST ${res.status}: ${res.body.slice(0, 200)}\n`);
  };
  const started = now();
  const stopAt = started + seconds * 1000;
  // The storm: a third of the way in, every socket drops at once and comes back (200 at a time,
  // notifier's with `since`) while events go on at the same rate.
  const storm = {};
  if (config.storm) {
    setTimeout(async () => {
      storm.acked_before = acked;
      storm.started = now();
      for (const sock of sockets) if (sock) sock.terminate();
      connectErrorsNow = 0;
      await openAll();
      storm.seconds = (now() - storm.started) / 1000;
      // The publish rate over the storm, or its first second if it was shorter.
      await sleep(Math.max(0, storm.started + 1000 - now()));
      storm.window = (now() - storm.started) / 1000;
      storm.acked_during = acked - storm.acked_before;
      storm.connect_errors = connectErrorsNow;
    }, (seconds * 1000) / 3);
  }
  // Churn: `churn` sockets a second (a tenth of them every 100 ms) drop and come back, with
  // `since`, for the whole run; each is counted when it is subscribed again.
  let churned = 0;
  let churnErrors = 0;
  const reopening = new Uint8Array(users);
  const churner = config.churn
    ? setInterval(() => {
        for (let n = 0; n < Math.max(1, Math.round(config.churn / 10)); n++) {
          const i = Math.floor(Math.random() * users);
          if (reopening[i] || sockets[i]?.readyState !== WebSocket.OPEN) continue;
          reopening[i] = 1;
          sockets[i].terminate();
          open(i).then(
            () => ((reopening[i] = 0), churned++),
            (err) => {
              reopening[i] = 0;
              if (++churnErrors <= 3) process.stderr.write(`churn u${i}: ${err.message}\n`);
            },
          );
        }
      }, 100)
    : null;
  if (config.rate) {
    const interval = 1000 / config.rate;
    while (now() < stopAt && seq < maxSeq) {
      const wait = started + seq * interval - now();
      if (wait > 0) await sleep(wait);
      send(); // not awaited: the rate is the schedule's
    }
  } else {
    const window = config.window ?? 32;
    let arrived = 0;
    await new Promise((resolve) => {
      onArrive = () => {
        arrived++;
        if (now() < stopAt && seq < maxSeq) send();
        else if (arrived >= seq) resolve();
      };
      for (let n = 0; n < window; n++) send();
      setTimeout(resolve, seconds * 1000 + 30_000);
    });
  }
  const elapsed = (now() - started) / 1000;
  if (churner) clearInterval(churner);
  let deadline = now() + 120_000;
  while (config.storm && storm.window === undefined && now() < deadline) await sleep(50);
  deadline = now() + 30_000;
  while (received < acked && now() < deadline) await sleep(50);
  await sleep(500);
  let lost = 0;
  let duplicated = 0;
  for (let s = 1; s <= seq; s++) {
    if (seen[s] === 0) lost++;
    else if (seen[s] > 1) duplicated += seen[s] - 1;
  }
  for (const sock of sockets) if (sock) sock.terminate();
  return {
    users,
    connect_errors: connectErrors,
    connect_seconds: connectSecs,
    events: seq,
    acknowledged: acked,
    refused,
    seconds: elapsed,
    events_per_sec: acked / elapsed,
    lost: lost - refused,
    duplicated,
    misrouted,
    latency: hist.summary(),
    ...(config.churn ? { churn: { reconnected: churned, connect_errors: churnErrors } } : {}),
    ...(config.storm
      ? {
          storm: {
            resubscribe_seconds: storm.seconds ?? null,
            connect_errors: storm.connect_errors ?? null,
            events_per_sec_before: storm.acked_before / ((storm.started - started) / 1000),
            events_per_sec_during: storm.acked_during / storm.window,
          },
        }
      : {}),
  };
}

const modes = { fanout, hold, count, recover, http: httpLoad, personal };

const run = modes[config.mode];
const cpuStart = process.cpuUsage();
const wallStart = now();
if (!run) {
  process.stderr.write(`unknown mode ${config.mode}\n`);
  process.exit(2);
}
const hardStop = setTimeout(
  () => {
    process.stderr.write("loadgen: hard deadline reached\n");
    process.exit(3);
  },
  (config.hard_deadline_secs ?? 900) * 1000,
);
hardStop.unref();
run()
  .then((result) => {
    const cpu = process.cpuUsage(cpuStart);
    // The load generator's own CPU over its whole run (one core = 100): under ~90, it is not the limit.
    result.loadgen_cpu_percent = ((cpu.user + cpu.system) / 1000 / (now() - wallStart)) * 100;
    emit({ result });
    process.exit(0);
  })
  .catch((err) => {
    process.stderr.write(`loadgen failed: ${err.stack || err}\n`);
    process.exit(1);
  });
