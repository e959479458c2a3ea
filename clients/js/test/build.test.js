// The classic-script build (notifier.global.js) is generated from notifier.js and committed:
// rebuild it here and fail if the committed file drifted, then check that it exposes exactly
// the module's exports on `Notifier`.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import vm from "node:vm";

import { buildGlobal, GLOBAL_BUILD, SOURCE } from "../build.mjs";
import * as module from "../notifier.js";

test("notifier.global.js is exactly what build.mjs makes of notifier.js (run `npm run build`)", () => {
  const expected = buildGlobal(readFileSync(SOURCE, "utf8"));
  const committed = readFileSync(GLOBAL_BUILD, "utf8");
  assert.ok(committed === expected, "notifier.global.js is out of date: run `npm run build` in clients/js and commit it");
});

test("the classic build defines window.Notifier with every export of the module", () => {
  const window = /** @type {Record<string, any>} */ ({ console, setTimeout, clearTimeout, queueMicrotask });
  vm.createContext(window);
  vm.runInContext(readFileSync(GLOBAL_BUILD, "utf8"), window, { filename: "notifier.global.js" });
  const Notifier = window.Notifier;
  assert.deepEqual(Object.keys(Notifier).sort(), Object.keys(module).sort());
  assert.ok(Object.isFrozen(Notifier));
  assert.equal(typeof Notifier.NotifierClient, "function");
  assert.deepEqual({ ...Notifier.CloseCodes }, { ...module.CloseCodes });
  assert.deepEqual({ ...Notifier.ErrorCodes }, { ...module.ErrorCodes });
  assert.deepEqual([...Notifier.TRANSIENT_CLOSE_CODES], [...module.TRANSIENT_CLOSE_CODES]);
  assert.equal(Notifier.backoff(3, 500, 20000, () => 0.5), module.backoff(3, 500, 20000, () => 0.5));
  assert.equal(Notifier.isTerminalClose(4501), true);
  // Nothing else leaks into the global scope.
  assert.deepEqual(Object.keys(window).sort(), ["Notifier", "clearTimeout", "console", "queueMicrotask", "setTimeout"]);
});

test("the build refuses module syntax it cannot turn into a classic script", () => {
  assert.throws(() => buildGlobal('import { x } from "./x.js";\nexport const a = 1;\n'), /imports cannot be bundled/);
  assert.throws(() => buildGlobal("const a = 1;\nexport { a };\n"), /only "export const\|function\|class NAME"/);
  assert.throws(() => buildGlobal("export default 1;\n"), /only "export/);
  assert.throws(() => buildGlobal("const a = 1;\n"), /exports nothing/);
  assert.match(buildGlobal("export const a = 1;\nexport function b() {}\n"), /root\.Notifier = Object\.freeze\(\{ a, b \}\);/);
});
