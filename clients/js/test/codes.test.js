// The pure parts: backoff bounds, terminal/transient close codes, and the code table mirror
// of realtime/codes.py (read from the repository, so the two cannot drift apart silently).

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { backoff, CloseCodes, ErrorCodes, isTerminalClose, State, TRANSIENT_CLOSE_CODES } from "../notifier.js";

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
