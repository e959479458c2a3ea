// The pure parts: backoff bounds, terminal/transient close codes, and the code table mirror
// of realtime/codes.py (read from the repository, so the two cannot drift apart silently).

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { backoff, CloseCodes, ErrorCodes, isTerminalClose, refreshDelay, State, TRANSIENT_CLOSE_CODES } from "../notifier.js";

const CODES_PY = new URL("../../../realtime/codes.py", import.meta.url);

test("backoff stays within [min, min + min * 2^step] and never above max", () => {
  let seed = 42;
  const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  for (let step = 0; step < 40; step++) {
    for (let i = 0; i < 50; i++) {
      const delay = backoff(step, 500, 20000, random);
      assert.ok(delay >= 500, `step ${step}: ${delay} < min`);
      assert.ok(delay <= 20000, `step ${step}: ${delay} > max`);
      assert.ok(delay <= 500 + 500 * 2 ** step, `step ${step}: ${delay} beyond the window`);
      assert.ok(Number.isInteger(delay));
    }
  }
});

test("backoff is full jitter over a window that doubles per step", () => {
  assert.equal(backoff(0, 500, 20000, () => 0), 500);
  assert.equal(backoff(0, 500, 20000, () => 0.999999), 999);
  assert.equal(backoff(3, 500, 20000, () => 0.5), 500 + 0.5 * 4000);
  assert.equal(backoff(10, 500, 20000, () => 0.999999), 20000); // capped
  assert.equal(backoff(1000, 500, 20000, () => 0.5), 10500); // huge steps do not overflow
  assert.equal(backoff(-1, 500, 20000, () => 0), 500);
  assert.equal(backoff(2, 500, 100, () => 0.5), 500); // max below min: min wins
});

test("backoff with the default random stays in bounds", () => {
  for (let i = 0; i < 200; i++) {
    const delay = backoff(i % 8, 10, 1000);
    assert.ok(delay >= 10 && delay <= 1000);
  }
});

test("terminal close codes are 4500-4999; the transient ones are not terminal", () => {
  for (const code of [4500, 4501, 4502, 4503, 4999]) assert.equal(isTerminalClose(code), true, String(code));
  for (const code of [1000, 1001, 1006, 4000, 4001, 4003, 4499, 5000]) assert.equal(isTerminalClose(code), false, String(code));
  for (const code of TRANSIENT_CLOSE_CODES) assert.equal(isTerminalClose(code), false, String(code));
});

test("State names match the contract", () => {
  assert.deepEqual(Object.values(State), ["connecting", "connected", "disconnected", "closed"]);
});

/**
 * Parse `class NAME(...):` members of the form `KEY = value` out of codes.py.
 * @param {string} source
 * @param {string} name
 */
function pythonEnum(source, name) {
  const body = source.split(new RegExp(`^class ${name}\\(.*\\):\\s*$`, "m"))[1];
  assert.ok(body, `class ${name} not found in realtime/codes.py`);
  const members = {};
  for (const line of body.split("\n").slice(1)) {
    if (/^\S/.test(line)) break; // dedent: the class ended
    const match = line.match(/^\s+([A-Z_]+)\s*=\s*(?:"([^"]*)"|(\d+))\s*(?:#.*)?$/); // a trailing comment is fine
    if (match) members[match[1]] = match[2] ?? Number(match[3]);
  }
  return members;
}

test("CloseCodes, ErrorCodes and TRANSIENT_CLOSE_CODES mirror realtime/codes.py", () => {
  const source = readFileSync(CODES_PY, "utf8");
  assert.deepEqual({ ...CloseCodes }, pythonEnum(source, "CloseCode"));
  assert.deepEqual({ ...ErrorCodes }, pythonEnum(source, "ErrorCode"));
  const transient = source.match(/TRANSIENT_CLOSE_CODES[^=]*=\s*frozenset\(\s*\{([^}]*)\}/);
  assert.ok(transient, "TRANSIENT_CLOSE_CODES not found in realtime/codes.py");
  const python = transient[1].split(",").map((s) => Number(s.trim())).filter((n) => n > 0);
  assert.deepEqual([...TRANSIENT_CLOSE_CODES].sort(), python.sort());
  const terminal = source.match(/return\s+(\d+)\s*<=\s*code\s*<=\s*(\d+)/);
  assert.ok(terminal, "is_terminal's range not found in realtime/codes.py");
  assert.equal(isTerminalClose(Number(terminal[1])), true);
  assert.equal(isTerminalClose(Number(terminal[1]) - 1), false);
  assert.equal(isTerminalClose(Number(terminal[2])), true);
  assert.equal(isTerminalClose(Number(terminal[2]) + 1), false);
});

// -- refreshDelay ------------------------------------------------------------------------------

const jwt = (claims) =>
  [{ alg: "HS256", typ: "JWT" }, claims].map((part) => Buffer.from(JSON.stringify(part)).toString("base64url")).join(".") + ".sig";

test("refreshDelay: max(5 s, 10% of the time left) before exp", () => {
  const now = 1_760_000_000_000;
  const exp = (secs) => jwt({ sub: "42", exp: now / 1000 + secs });
  assert.equal(refreshDelay(exp(3600), now), 3_240_000); // 1 h: 6 min before
  assert.equal(refreshDelay(exp(60), now), 54_000); // 1 min: 6 s before
  assert.equal(refreshDelay(exp(40), now), 35_000); // 40 s: 5 s before
  assert.equal(refreshDelay(exp(20), now), 15_000);
  assert.equal(refreshDelay(exp(6), now), 3_000); // short: half the time left
  assert.equal(refreshDelay(exp(3), now), 1_500);
  assert.equal(refreshDelay(exp(1), now), 1_000); // never sooner than 1 s
  assert.equal(refreshDelay(exp(0.1), now), 1_000);
  assert.equal(refreshDelay(exp(30 * 86400), now), Math.floor(30 * 86400 * 1000 * 0.9)); // beyond setTimeout's range
});

test("refreshDelay: the delay is always ahead and before exp, whatever the lifetime", () => {
  const now = 1_760_000_000_000;
  for (let secs = 2.001; secs < 1e7; secs *= 1.37) {
    const delay = /** @type {number} */ (refreshDelay(jwt({ sub: "42", exp: now / 1000 + secs }), now));
    assert.ok(delay >= 1000, `${secs}: ${delay}`);
    assert.ok(delay < secs * 1000, `${secs}: ${delay} is past exp`);
    assert.ok(secs * 1000 - delay >= Math.min(5000, (secs * 1000) / 2) - 1, `${secs}: ${delay} leaves too little`);
  }
});

test("refreshDelay: iat bounds the time left, so a clock running behind does not delay the refresh", () => {
  const now = 1_760_000_000_000;
  const iat = now / 1000 + 600; // this machine's clock is 10 min behind the one that minted it
  assert.equal(refreshDelay(jwt({ sub: "42", iat, exp: iat + 60 }), now), 54_000);
  assert.equal(refreshDelay(jwt({ sub: "42", iat: now / 1000 - 30, exp: now / 1000 + 60 }), now), 54_000);
});

test("refreshDelay: null for opaque, malformed and already expired tokens", () => {
  const now = 1_760_000_000_000;
  for (const token of [
    undefined,
    null,
    "",
    "opaque-session-token",
    "a.b",
    "a.b.c.d",
    "x.!!!.y",
    `x.${Buffer.from("not json").toString("base64url")}.y`,
    jwt({ sub: "42" }),
    jwt({ sub: "42", exp: "soon" }),
    jwt({ sub: "42", exp: null }),
    `x.${Buffer.from("[1,2]").toString("base64url")}.y`,
    jwt({ sub: "42", exp: now / 1000 - 1 }),
    jwt({ sub: "42", exp: now / 1000 }),
  ]) {
    assert.equal(refreshDelay(token, now), null, String(token));
  }
});

test("refreshDelay reads base64url payloads with non-ASCII claims", () => {
  const now = 1_760_000_000_000;
  const token = jwt({ sub: "zoë-✓", name: "?>?>", exp: now / 1000 + 60 });
  assert.match(token.split(".")[1], /[-_]/); // base64url, not base64
  assert.equal(refreshDelay(token, now), 54_000);
});
