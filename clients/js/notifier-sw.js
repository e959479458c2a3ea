// notifier's service worker for Web Push: shows each push as a notification and, on a click,
// focuses the tab already at its `url` or opens one.
//
// Push needs the service worker on your own origin. Either copy this file there and register
// it (`client.push.enable({ serviceWorker: "/notifier-sw.js" })`), or add one line to the
// service worker you have:
//
//   importScripts("https://notifier.example.com/static/notifier-sw.js");
//
// A push's payload is notifier's JSON (DESIGN §11): {"title", "body", "url", "icon", "tag",
// "id", "channel", "event"}. The tag is the event id unless the publisher gave one, so a
// push that reaches the browser twice replaces itself rather than showing twice.

const NOTIFIER_DEFAULT_TITLE = "New notification";

/**
 * What to show for one push: the title and the options of `showNotification`.
 * @param {{json(): any, text(): string} | null} data the push's PushMessageData
 * @returns {{title: string, options: NotificationOptions}}
 */
function notifierNotification(data) {
  /** @type {any} */
  let payload = {};
  try {
    payload = data ? data.json() : {};
  } catch {
    payload = { body: data ? data.text() : "" };
  }
  if (payload === null || typeof payload !== "object") payload = { body: String(payload) };
  /** @type {NotificationOptions} */
  const options = {
    body: typeof payload.body === "string" ? payload.body : "",
    data: { url: payload.url ?? null, id: payload.id ?? null, channel: payload.channel ?? null, event: payload.event ?? null },
  };
  if (payload.icon) options.icon = payload.icon;
  if (payload.tag || payload.id) options.tag = payload.tag || payload.id;
  const title = typeof payload.title === "string" && payload.title ? payload.title : NOTIFIER_DEFAULT_TITLE;
  return { title, options };
}

/**
 * Focus a window already at `url`, else open one there (the scope's root without a url).
 * @param {any} clients the worker's Clients
 * @param {string} scope the registration's scope, to resolve relative urls
 * @param {string | null} url
 * @returns {Promise<unknown>}
 */
async function notifierOpen(clients, scope, url) {
  const target = new URL(url || "/", scope).href;
  const windows = await clients.matchAll({ type: "window", includeUncontrolled: true });
  const open = windows.find((/** @type {any} */ client) => client.url === target);
  if (open) return open.focus();
  return clients.openWindow(target);
}

/** @type {any} the ServiceWorkerGlobalScope, where this runs as a service worker */
const notifierScope = typeof self !== "undefined" ? self : undefined;
if (notifierScope && typeof notifierScope.addEventListener === "function" && notifierScope.registration) {
  notifierScope.addEventListener("push", (/** @type {any} */ event) => {
    const { title, options } = notifierNotification(event.data);
    event.waitUntil(notifierScope.registration.showNotification(title, options));
  });
  notifierScope.addEventListener("notificationclick", (/** @type {any} */ event) => {
    event.notification.close();
    const url = event.notification.data?.url ?? null;
    event.waitUntil(notifierOpen(notifierScope.clients, notifierScope.registration.scope, url));
  });
}
