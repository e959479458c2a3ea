// Real browser: "Enable push" on the inbox demo page (/demo/inbox/) in headless Debian Chromium,
// as far as a browser goes here. Notification permission is granted by the test; the page
// registers the service's worker (/static/notifier-sw.js) for real; Chromium's own push
// service is unreachable here, so PushManager.subscribe answers the subscription the test's
// stand-in push service made (E2E_SUBSCRIPTION) instead. client.push then posts it to
// /api/push/subscriptions, and the button turns to "Disable push". A screenshot is saved.
//
// Env: NOTIFIER_HTTP, E2E_TOKEN, E2E_SUBSCRIPTION (JSON), ARTIFACTS (optional). Prints
// {"result": {"registeredScope", "endpoint", "screenshot"}}.

import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

import { artifactsDir, deadline, env, launchChromium, report, watchPage } from "./lib.mjs";

const HTTP = env("NOTIFIER_HTTP");
const TOKEN = env("E2E_TOKEN");
const SUBSCRIPTION = JSON.parse(env("E2E_SUBSCRIPTION"));
/** @type {string[]} */
const problems = [];
deadline(60_000, () => ({ problems }));

const browser = await launchChromium();
try {
  const context = await browser.newContext({ viewport: { width: 1000, height: 520 } });
  await context.grantPermissions(["notifications"], { origin: HTTP });
  await context.addInitScript((subscription) => {
    // Stands in for Chromium's push service: what subscribe() would give, with the stand-in's keys.
    let current = null;
    const make = (applicationServerKey) => ({
      endpoint: subscription.endpoint,
      expirationTime: null,
      options: { applicationServerKey, userVisibleOnly: true },
      toJSON: () => ({ endpoint: subscription.endpoint, expirationTime: null, keys: subscription.keys }),
      unsubscribe: async () => ((current = null), true),
    });
    PushManager.prototype.subscribe = async function (options) {
      const key = options.applicationServerKey;
      current = make(key instanceof ArrayBuffer ? key : new Uint8Array(key).buffer);
      return current;
    };
    PushManager.prototype.getSubscription = async () => current;
  }, SUBSCRIPTION);
  const page = await context.newPage();
  watchPage(page, "push", problems);
  await page.goto(`${HTTP}/demo/inbox/#token=${encodeURIComponent(TOKEN)}`);
  await page.waitForSelector('#push[data-state="unsubscribed"]', { state: "visible" });
  await page.click("#push");
  await page.waitForSelector('#push[data-state="subscribed"]', { timeout: 20_000 });
  assert.equal(await page.textContent("#push"), "Disable push");
  const registeredScope = await page.evaluate(async () => (await navigator.serviceWorker.getRegistration("/static/"))?.scope);
  assert.ok(registeredScope, "the service worker is registered");
  const dir = artifactsDir();
  mkdirSync(dir, { recursive: true });
  const screenshot = join(dir, "inbox-push-enabled.png");
  await page.screenshot({ path: screenshot });
  assert.deepEqual(problems, []);
  report({ result: { registeredScope, endpoint: SUBSCRIPTION.endpoint, screenshot } });
} finally {
  await browser.close();
}
