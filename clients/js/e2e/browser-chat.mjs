// Real browser: two tabs of headless Debian Chromium open the same chat room
// (/demo/chat/<room>/), set display names, and see each other's messages live; a third tab
// that joins later gets the room's history. A screenshot of each of the two tabs is saved.
// Then a page loads the classic-script build (/static/notifier.global.js) and uses
// window.Notifier to connect.
//
// Env: NOTIFIER_HTTP, E2E_ROOM, ARTIFACTS (optional). Prints {"result": {...}}.

import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

import { artifactsDir, deadline, env, launchChromium, report, watchPage } from "./lib.mjs";

const HTTP = env("NOTIFIER_HTTP");
const ROOM = env("E2E_ROOM");
const WS = `${HTTP.replace(/^http/, "ws")}/ws/`;
/** @type {string[]} */
const problems = [];
deadline(60_000, () => ({ problems }));

/** @param {import("playwright-core").Page} page */
const messages = (page) =>
  page.$$eval("#messages li.message", (items) =>
    items.map((li) => ({
      name: /** @type {HTMLElement} */ (li).dataset.name,
      offset: Number(/** @type {HTMLElement} */ (li).dataset.offset),
      mine: li.classList.contains("mine"),
      text: li.querySelector(".text")?.textContent,
    })),
  );

/**
 * @param {import("playwright-core").Page} page
 * @param {number} count
 */
const waitForMessages = (page, count) =>
  page.waitForFunction((n) => document.querySelectorAll("#messages li.message").length >= n, count);

const browser = await launchChromium();
try {
  const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
  /** @param {string} name */
  async function openTab(name) {
    const page = await context.newPage();
    watchPage(page, name, problems);
    await page.goto(`${HTTP}/demo/chat/${ROOM}/`);
    await page.waitForSelector('#state[data-state="connected"]');
    return page;
  }
  const alice = await openTab("alice");
  const bob = await openTab("bob");
  await alice.fill("#name", "Alice");
  await bob.fill("#name", "Bob");

  await alice.fill("#text", "Hi Bob! Can you see this?");
  await alice.click("#send");
  await waitForMessages(bob, 1);
  await waitForMessages(alice, 1);
  await bob.fill("#text", "Loud and clear, Alice. Live from the other tab.");
  await bob.press("#text", "Enter");
  await waitForMessages(alice, 2);
  await waitForMessages(bob, 2);
  await alice.fill("#text", "Great: every message has its offset.");
  await alice.press("#text", "Enter");
  await waitForMessages(bob, 3);
  await waitForMessages(alice, 3);

  const seenByAlice = await messages(alice);
  const seenByBob = await messages(bob);
  const expected = [
    { name: "Alice", offset: 1, text: "Hi Bob! Can you see this?" },
    { name: "Bob", offset: 2, text: "Loud and clear, Alice. Live from the other tab." },
    { name: "Alice", offset: 3, text: "Great: every message has its offset." },
  ];
  assert.deepEqual(seenByAlice.map(({ mine, ...m }) => m), expected);
  assert.deepEqual(seenByBob.map(({ mine, ...m }) => m), expected);
  assert.deepEqual(seenByAlice.map((m) => m.mine), [true, false, true], "Alice's own messages are hers");
  assert.deepEqual(seenByBob.map((m) => m.mine), [false, true, false], "Bob's own messages are his");
  assert.equal(await alice.inputValue("#text"), "", "the composer is cleared after sending");

  // A tab that joins later sees the room's history.
  const carol = await openTab("carol");
  await waitForMessages(carol, 3);
  assert.deepEqual((await messages(carol)).map(({ mine, ...m }) => m), expected);
  await carol.close();

  const dir = artifactsDir();
  mkdirSync(dir, { recursive: true });
  const screenshots = [join(dir, "chat-alice.png"), join(dir, "chat-bob.png")];
  await alice.screenshot({ path: screenshots[0] });
  await bob.screenshot({ path: screenshots[1] });

  // The classic-script build: <script src="/static/notifier.global.js"> defines window.Notifier.
  const classic = await context.newPage();
  // Uncaught errors only: /healthz, the blank page of the service's origin used here (the
  // WebSocket checks Origin), has no icon, so the browser logs a 404 for /favicon.ico.
  classic.on("pageerror", (error) => problems.push(`classic: uncaught ${error}`));
  await classic.goto(`${HTTP}/healthz`);
  await classic.setContent('<!doctype html><script src="/static/notifier.global.js"></script>');
  const viaGlobal = await classic.evaluate(
    async ({ ws, channel }) => {
      const N = /** @type {any} */ (window).Notifier;
      const client = new N.NotifierClient(ws);
      const info = await new Promise((resolve) => {
        client.on("subscribed", resolve);
        client.subscribe(channel, () => {}, { since: { offset: 0, epoch: "" } });
      });
      const state = client.state;
      client.close();
      return { exports: Object.keys(N).sort(), info, state };
    },
    { ws: WS, channel: `chat:${ROOM}` },
  );
  assert.equal(viaGlobal.state, "connected");
  assert.equal(/** @type {any} */ (viaGlobal.info).offset, 3);
  assert.ok(viaGlobal.exports.includes("NotifierClient"));

  assert.deepEqual(problems, []);
  report({ result: { messages: seenByBob, screenshots, classic: viaGlobal } });
} finally {
  await browser.close();
}
