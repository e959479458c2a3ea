// Real browser: the inbox demo page (/demo/inbox/) in two tabs of headless Debian Chromium,
// both one user's. Three notifications published while one tab is closed show in both; one
// marked read in tab A leaves tab B at 2 unread (how long that took is reported); a reload keeps
// the state; "Mark all read" in B clears A's badge; an archived one leaves the list. A
// screenshot of each tab is saved.
//
// Env: NOTIFIER_HTTP, NOTIFIER_API_KEY, E2E_USER, E2E_TOKEN, ARTIFACTS (optional). Prints
// {"result": {...}}.

import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

import { artifactsDir, deadline, env, launchChromium, notify, report, watchPage } from "./lib.mjs";

const HTTP = env("NOTIFIER_HTTP");
const KEY = env("NOTIFIER_API_KEY");
const USER = env("E2E_USER");
const TOKEN = env("E2E_TOKEN");
/** @type {string[]} */
const problems = [];
deadline(90_000, () => ({ problems }));

/** @param {import("playwright-core").Page} page */
const badge = (page) => page.$eval("#badge", (node) => Number(/** @type {HTMLElement} */ (node).dataset.count));
/** @param {import("playwright-core").Page} page */
const items = (page) =>
  page.$$eval("#list li.notification", (nodes) =>
    nodes.map((li) => ({ id: /** @type {HTMLElement} */ (li).dataset.id, unread: li.classList.contains("unread") })),
  );
/**
 * @param {import("playwright-core").Page} page
 * @param {number} unread
 * @param {number} listed
 */
const waitForState = (page, unread, listed) =>
  page.waitForFunction(
    ([u, l]) =>
      document.getElementById("badge")?.dataset.count === String(u) &&
      document.querySelectorAll("#list li.notification").length === l,
    [unread, listed],
    { timeout: 20_000 },
  );

/** @param {string} event @param {string} category */
async function publish(event, category) {
  const { status, body } = await notify(HTTP, KEY, { user: USER, event, data: { from: "browser-inbox" }, inbox: true, category });
  assert.equal(status, 202, JSON.stringify(body));
}

const browser = await launchChromium();
try {
  const context = await browser.newContext({ viewport: { width: 1000, height: 720 } });
  /** @param {string} name */
  async function openTab(name) {
    const page = await context.newPage();
    watchPage(page, name, problems);
    await page.goto(`${HTTP}/demo/inbox/#token=${encodeURIComponent(TOKEN)}`);
    await page.waitForSelector('#state[data-state="connected"]');
    await page.waitForSelector('#list[data-loaded="true"]');
    return page;
  }
  const first = await openTab("a");
  assert.equal(await badge(first), 0);
  await first.close(); // the user is offline while these arrive
  await publish("order.shipped", "orders");
  await publish("comment.added", "social");
  await publish("invoice.ready", "billing");

  const a = await openTab("a");
  const b = await openTab("b");
  await waitForState(a, 3, 3);
  await waitForState(b, 3, 3);
  const listed = await items(a);
  assert.deepEqual(listed.map((n) => n.unread), [true, true, true]);

  const started = Date.now();
  await a.click(`#list li.notification[data-id="${listed[0].id}"] button.toggle`);
  await waitForState(b, 2, 3);
  const markedAcrossTabsMs = Date.now() - started;
  await b.reload();
  await b.waitForSelector('#list[data-loaded="true"]');
  await waitForState(b, 2, 3);
  assert.deepEqual((await items(b)).map((n) => n.unread), [false, true, true]);

  await b.click("#mark-all");
  await waitForState(a, 0, 3);
  await a.click(`#list li.notification[data-id="${listed[1].id}"] button.archive`);
  await waitForState(b, 0, 2);

  await publish("reminder", "orders");
  await waitForState(a, 1, 3);
  await waitForState(b, 1, 3);

  const dir = artifactsDir();
  mkdirSync(dir, { recursive: true });
  const screenshots = [join(dir, "inbox-tab-a.png"), join(dir, "inbox-tab-b.png")];
  await a.screenshot({ path: screenshots[0], fullPage: true });
  await b.screenshot({ path: screenshots[1], fullPage: true });
  assert.deepEqual(problems, []);
  report({ result: { markedAcrossTabsMs, listed: listed.length, screenshots } });
} finally {
  await browser.close();
}
