// Helpers of the end-to-end scripts. These scripts run against a real notifier server and are
// started by tests/test_js_client.py, which starts Redis and the server processes, passes the
// URLs and the API key in environment variables, and reads the JSON lines these scripts print
// (one object per line) to know where they are: {"ready": true}, {"received": n}, and last
// {"result": {...}}. A failed check throws, and the script exits non-zero with the reason on
// stderr.

import { fileURLToPath } from "node:url";

/** Debian's Chromium; never a downloaded browser. */
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/**
 * A required environment variable.
 * @param {string} name
 * @returns {string}
 */
export function env(name) {
  const value = process.env[name];
  if (!value) {
    fail(`${name} is not set: run this script through tests/test_js_client.py (pytest), which starts the servers`);
  }
  return /** @type {string} */ (value);
}

/** @param {string} message @returns {never} */
export function fail(message) {
  console.error(`FAIL: ${message}`);
  process.exit(1);
}

/** Print one JSON line for the pytest side. @param {Record<string, unknown>} message */
export function report(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

/**
 * Exit non-zero if the script is still running after `ms` (a guard against hangs, not a
 * timing assertion).
 * @param {number} ms
 * @param {() => unknown} [describe] what to print about the state reached
 */
export function deadline(ms, describe = () => "") {
  setTimeout(() => fail(`still running after ${ms / 1000}s; state: ${JSON.stringify(describe())}`), ms).unref();
}

/**
 * Poll until `predicate()` is truthy.
 * @param {() => unknown | Promise<unknown>} predicate
 * @param {string} what
 * @param {number} [timeoutMs]
 */
export async function waitFor(predicate, what, timeoutMs = 30_000) {
  const end = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs / 1000}s waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/**
 * POST /api/notify; answers {status, body}.
 * @param {string} http base URL, e.g. http://127.0.0.1:8000
 * @param {string} key API key
 * @param {Record<string, unknown>} body
 */
export async function notify(http, key, body) {
  const response = await fetch(`${http}/api/notify`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${key}` },
    body: JSON.stringify(body),
  });
  return { status: response.status, body: await response.json() };
}

/** Headless Debian Chromium through playwright-core. */
export async function launchChromium() {
  const { chromium } = await import("playwright-core");
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 30_000 });
}

/**
 * Collect a page's uncaught errors and console errors, so a script can insist there were none.
 * @param {import("playwright-core").Page} page
 * @param {string} name
 * @param {string[]} into
 */
export function watchPage(page, name, into) {
  page.on("pageerror", (error) => into.push(`${name}: uncaught ${error}`));
  page.on("console", (message) => {
    if (message.type() === "error") into.push(`${name}: console.error ${message.text()}`);
  });
}

/** The repository's test-artifacts/ directory, or $ARTIFACTS. */
export function artifactsDir() {
  return process.env.ARTIFACTS || fileURLToPath(new URL("../../../test-artifacts/", import.meta.url));
}
