// Real browser: the demo pages with connection tokens the test (tests/test_js_client.py) minted
// with the server's NOTIFIER_JWT_SECRET. On /demo/, an anonymous page is refused `user:<id>`;
// the token pasted into the token field makes it connect as that user (sent in the `auth`
// frame, never in the URL), the refused subscription goes through, and an event published over
// HTTP with {"user": "<id>"} appears. Then the same tab opens a chat room, which uses the token,
// and shows who is in the room from live join/leave frames as a second user's tab comes and goes.
// Screenshots: demo-token.png (the demo page) and chat-presence.png (the room, two users in it).
//
// Env: NOTIFIER_HTTP, NOTIFIER_API_KEY, E2E_USER, E2E_TOKEN, E2E_USER_B, E2E_TOKEN_B, E2E_ROOM,
// ARTIFACTS (optional). Prints {"result": {...}}.

import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

import { artifactsDir, deadline, env, launchChromium, notify, report, watchPage } from "./lib.mjs";

const HTTP = env("NOTIFIER_HTTP");
const KEY = env("NOTIFIER_API_KEY");
const USER = env("E2E_USER");
const TOKEN = env("E2E_TOKEN");
const USER_B = env("E2E_USER_B");
const TOKEN_B = env("E2E_TOKEN_B");
const ROOM = env("E2E_ROOM");
const CHANNEL = `user:${USER}`;
/** @type {string[]} */
const problems = [];
/** @type {string[]} */
const socketUrls = [];
deadline(90_000, () => ({ problems, socketUrls }));

/** @param {import("playwright-core").Page} page */
const members = (page) =>
  page.$$eval("#members li", (items) => items.map((li) => /** @type {HTMLElement} */ (li).dataset.user));

const browser = await launchChromium();
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  /** @param {string} name */
  async function newPage(name) {
    const page = await context.newPage();
    watchPage(page, name, problems);
    page.on("websocket", (ws) => socketUrls.push(ws.url()));
    return page;
  }

  // 1. Anonymous: the personal channel is refused.
  const page = await newPage("demo");
  await page.goto(`${HTTP}/demo/`);
  await page.waitForSelector('#state[data-state="connected"]');
  assert.equal(await page.textContent("#user"), "anonymous");
  await page.fill("#channel", CHANNEL);
  await page.click('#subscribe-form button[type="submit"]');
  await page.waitForSelector(`#subscriptions li[data-channel="${CHANNEL}"][data-status="refused"]`);

  // 2. With the token: connected as USER, and the channel goes through.
  await page.fill("#token", TOKEN);
  await page.click("#connect");
  await page.waitForFunction((user) => document.querySelector("#user")?.textContent === user, USER);
  await page.waitForSelector('#state[data-state="connected"]');
  await page.waitForSelector(`#subscriptions li[data-channel="${CHANNEL}"][data-status="subscribed"]`);

  // 3. An event for this user, published over HTTP, shows up.
  const answer = await notify(HTTP, KEY, { user: USER, event: "account.updated", data: { text: "for you only" } });
  assert.equal(answer.status, 202, JSON.stringify(answer.body));
  assert.equal(answer.body.channels[CHANNEL].offset, 1);
  const rowSelector = `#events tr.event[data-channel="${CHANNEL}"][data-offset="1"]`;
  await page.waitForSelector(rowSelector);
  const row = await page.$eval(rowSelector, (tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent));
  assert.deepEqual(row.slice(1), [CHANNEL, "#1", "account.updated", '{"text":"for you only"}']);
  const log = await page.$$eval("#state-log li", (items) => items.map((li) => li.textContent ?? ""));
  assert.ok(log.some((line) => line.endsWith(`authenticated as user ${USER}`)), log.join(" | "));

  const dir = artifactsDir();
  mkdirSync(dir, { recursive: true });
  const demoShot = join(dir, "demo-token.png");
  await page.screenshot({ path: demoShot, fullPage: true });

  // 4. The chat room, in the same tab: it connects with the token and lists who joins.
  await page.goto(`${HTTP}/demo/chat/${ROOM}/`);
  await page.waitForSelector('#state[data-state="connected"]');
  await page.waitForSelector(`#members li[data-user="${USER}"]`);

  // A second user's tab: paste their token on /demo/, then open the room.
  const other = await newPage("other");
  await other.goto(`${HTTP}/demo/`);
  await other.fill("#token", TOKEN_B);
  await other.click("#connect");
  await other.waitForFunction((user) => document.querySelector("#user")?.textContent === user, USER_B);
  await other.goto(`${HTTP}/demo/chat/${ROOM}/`);
  await other.waitForSelector(`#members li[data-user="${USER_B}"]`);
  await page.waitForSelector(`#members li[data-user="${USER_B}"]`);
  const both = await members(page);
  assert.deepEqual(both, [USER, USER_B].sort());
  await other.fill("#text", "hello from the second user");
  await other.press("#text", "Enter");
  await page.waitForSelector("#messages li.message");
  // With a token and no name typed, each tab's display name is its user id.
  assert.equal(await page.inputValue("#name"), USER);
  assert.match(await page.textContent("#messages li.message"), new RegExp(USER_B));
  const chatShot = join(dir, "chat-presence.png");
  await page.screenshot({ path: chatShot });

  // The second tab closes: after the server's leave delay, the room says so.
  await other.close();
  await page.waitForFunction((user) => !document.querySelector(`#members li[data-user="${user}"]`), USER_B, {
    timeout: 30_000,
  });
  const dividers = await page.$$eval("#messages li.divider", (items) => items.map((li) => li.textContent));
  assert.ok(dividers.includes(`${USER_B} joined`) && dividers.includes(`${USER_B} left`), JSON.stringify(dividers));
  assert.deepEqual(await members(page), [USER]);

  // The token never went into a URL: it is sent in the `auth` frame.
  assert.ok(socketUrls.length >= 4, JSON.stringify(socketUrls));
  assert.ok(
    socketUrls.every((url) => !url.includes(TOKEN) && !url.includes(TOKEN_B) && !url.includes("token")),
    JSON.stringify(socketUrls),
  );
  assert.deepEqual(problems, []);
  report({ result: { user: USER, row, members: both, dividers, screenshots: [demoShot, chatShot] } });
} finally {
  await browser.close();
}
