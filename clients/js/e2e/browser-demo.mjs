// Real browser: headless Debian Chromium loads the demo page (/demo/) from a real server,
// subscribes through the page's form, and shows the events the test (tests/test_js_client.py)
// publishes, while the test kills and restarts the server the page is connected to. Every
// event must appear exactly once, in order. Then the page's own form publishes over HTTP, and
// a screenshot is saved.
//
// Env: NOTIFIER_HTTP, NOTIFIER_API_KEY, E2E_CHANNEL, E2E_COUNT, ARTIFACTS (optional).
// Prints {"ready": true}, {"received": n} as rows appear, then {"result": {...}}.

import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

import { artifactsDir, deadline, env, launchChromium, report, waitFor, watchPage } from "./lib.mjs";

const HTTP = env("NOTIFIER_HTTP");
const KEY = env("NOTIFIER_API_KEY");
const CHANNEL = env("E2E_CHANNEL");
const COUNT = Number(env("E2E_COUNT"));
/** @type {string[]} */
const problems = [];
/** @type {number[]} */
let offsets = [];
deadline(100_000, () => ({ offsets, problems }));

const browser = await launchChromium();
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  watchPage(page, "demo", problems);
  await page.goto(`${HTTP}/demo/`);
  await page.waitForSelector('#state[data-state="connected"]');

  await page.fill("#channel", CHANNEL);
  await page.click('#subscribe-form button[type="submit"]');
  await page.waitForSelector(`#subscriptions li[data-channel="${CHANNEL}"][data-status="subscribed"]`);
  report({ ready: true });

  /** The offsets of this channel's rows, oldest first (the table shows the newest first). */
  const readOffsets = () =>
    page.$$eval(`#events tr.event[data-channel="${CHANNEL}"]`, (rows) =>
      rows.map((row) => Number(/** @type {HTMLElement} */ (row).dataset.offset)).reverse(),
    );
  await waitFor(
    async () => {
      const now = await readOffsets();
      if (now.length !== offsets.length) report({ received: now.length, offset: now.at(-1) });
      offsets = now;
      return offsets.length >= COUNT;
    },
    `${COUNT} events on the page`,
    90_000,
  );
  await waitFor(async () => (await page.textContent("#state")) === "connected", "connected again");
  assert.deepEqual(
    offsets,
    Array.from({ length: COUNT }, (_, i) => i + 1),
    "every event shown exactly once, in order",
  );
  const log = await page.$$eval("#state-log li", (items) => items.map((li) => li.textContent ?? ""));
  const connects = await page.$$eval('#state-log li[data-state="connected"]', (items) => items.length);
  assert.ok(connects >= 2, `the page reconnected after the restart: ${log.join(" | ")}`);

  // The page's own publish form: POST /api/notify with the pasted API key.
  await page.fill("#api-key", KEY);
  await page.fill("#publish-channel", CHANNEL);
  await page.fill("#publish-event", "demo.form");
  await page.fill("#publish-data", '{"text": "sent from the demo page form"}');
  await page.click("#publish");
  const next = COUNT + 1;
  await page.waitForSelector(`#events tr.event[data-channel="${CHANNEL}"][data-offset="${next}"]`);
  const row = await page.$eval(`#events tr.event[data-offset="${next}"]`, (tr) =>
    [...tr.querySelectorAll("td")].map((td) => td.textContent),
  );
  assert.equal(row[1], CHANNEL);
  assert.equal(row[2], `#${next}`);
  assert.equal(row[3], "demo.form");
  assert.equal(row[4], '{"text":"sent from the demo page form"}');
  const publishResult = await page.textContent("#publish-result");
  assert.match(publishResult ?? "", new RegExp(`^202 · ${CHANNEL.replace(/[.]/g, "\\.")} offset ${next} `));

  // A wrong key is answered with the API's error, shown on the page.
  await page.fill("#api-key", "nk_not-a-key");
  await page.click("#publish");
  await page.waitForFunction(() => document.querySelector("#publish-result")?.textContent?.startsWith("401"));

  // Back to the good key and a fresh result line for the screenshot.
  await page.fill("#api-key", KEY);
  await page.fill("#publish-data", '{"text": "hello from the browser test"}');
  await page.click("#publish");
  await page.waitForSelector(`#events tr.event[data-offset="${next + 1}"]`);
  await page.waitForFunction(() => document.querySelector("#publish-result")?.textContent?.startsWith("202"));

  const dir = artifactsDir();
  mkdirSync(dir, { recursive: true });
  const screenshot = join(dir, "demo.png");
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: screenshot, fullPage: true });

  // Uncaught errors fail the test; console errors for WebSocket attempts during the restart
  // are expected (Chromium logs every refused connection).
  const unexpected = problems.filter((p) => !/WebSocket connection to .* failed|ERR_CONNECTION_REFUSED|status of 401/.test(p));
  assert.deepEqual(unexpected, []);
  report({ result: { count: offsets.length, stateLog: log, publishResult, screenshot } });
} finally {
  await browser.close();
}
