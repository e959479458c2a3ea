/**
 * notifier browser client: one dependency-free ES module, usable from `<script type="module">`.
 *
 * Speaks the WebSocket protocol of DESIGN.md §5 and implements the client contract of §7.
 * `CloseCodes`, `ErrorCodes` and `TRANSIENT_CLOSE_CODES` mirror `realtime/codes.py`; a test
 * reads both files and fails when they disagree.
 *
 * @module notifier
 */

// ---------------------------------------------------------------------------------------------
// Types

/** @typedef {"connecting" | "connected" | "disconnected" | "closed"} StateName */

/**
 * A stream position: the last offset the client has, in the channel's history epoch.
 * @typedef {{offset: number, epoch: string}} Position
 */

/**
 * An `event` frame as the server sends it (the whole frame is handed to handlers).
 * @typedef {object} EventFrame
 * @property {"event"} type
 * @property {string} channel
 * @property {number} offset
 * @property {string} id
 * @property {string} event
 * @property {unknown} data
 * @property {number} ts
 * @property {string} [sender]
 * @property {string} [epoch]
 */

/**
 * The `published` reply to `publish()`.
 * @typedef {{type: "published", channel: string, offset: number, id?: string, ref?: Ref}} PublishedFrame
 */

/** @typedef {string | number} Ref */

/** @typedef {{type: string, ref?: Ref, [field: string]: unknown}} ServerFrame */

/** @typedef {{channel: string, recovered: boolean, offset: number, epoch: string}} SubscribedInfo */

/** @typedef {{oldState: StateName, newState: StateName}} StateChange */

/**
 * A presence frame: `user` joined or left `channel` (namespaces with presence events, e.g. `chat:`).
 * @typedef {{type: "join" | "leave", channel: string, user: string}} PresenceInfo
 */

/**
 * The server accepted a token: the `auth` sent on connect (`refreshed: false`) or a `refresh`
 * sent before the token expired (`refreshed: true`).
 * @typedef {{user: string | null, refreshed: boolean}} AuthenticatedInfo
 */

/**
 * Payloads of the client's events, by event name.
 * @typedef {object} ClientEvents
 * @property {StateChange} state
 * @property {NotifierError} error
 * @property {SubscribedInfo} subscribed
 * @property {EventFrame} event
 * @property {PresenceInfo} presence
 * @property {AuthenticatedInfo} authenticated
 */

/**
 * The part of the WebSocket API the client uses; the browser's `WebSocket` and the `ws`
 * package both provide it.
 * @typedef {object} WebSocketLike
 * @property {number} readyState
 * @property {(data: string) => void} send
 * @property {(code?: number, reason?: string) => void} close
 * @property {(type: string, listener: (event: any) => void) => void} addEventListener
 */

/** @typedef {new (url: string) => WebSocketLike} WebSocketConstructor */

/**
 * The subset of the Web Storage API used to persist positions (e.g. `sessionStorage`).
 * @typedef {object} PositionStorage
 * @property {(key: string) => string | null} getItem
 * @property {(key: string, value: string) => void} setItem
 * @property {(key: string) => void} removeItem
 */

/** @typedef {string | null | undefined} TokenValue */

/**
 * @typedef {object} NotifierOptions
 * @property {TokenValue | (() => TokenValue | Promise<TokenValue>)} [token]
 *   A connection token, or a (possibly async) function returning one; called before every
 *   (re)connect, and again before the token's `exp` to send `{"op": "refresh"}`. Sent as the
 *   first frame (`{"op": "auth"}`), never in the URL.
 * @property {number} [minReconnectDelay] Milliseconds; the backoff's floor.
 * @property {number} [maxReconnectDelay] Milliseconds; the backoff's ceiling.
 * @property {WebSocketConstructor} [WebSocket] Defaults to `globalThis.WebSocket`.
 * @property {number | null} [heartbeatTimeout]
 *   Milliseconds of silence after which the connection is presumed dead. Default: twice the
 *   server's `hello.heartbeat`.
 * @property {PositionStorage | null} [storage] Persists positions, e.g. `sessionStorage`.
 * @property {number} [stableAfter] Milliseconds a connection must stay up before the backoff resets.
 * @property {string} [apiBase] The HTTP API's base URL for `client.inbox`, e.g.
 *   `https://host/api/`. Default: the socket URL with `ws/` replaced by `api/`.
 * @property {typeof fetch} [fetch] Defaults to `globalThis.fetch`.
 */

/** @typedef {{unread: number, unseen: number, total: number}} InboxCounts */

/**
 * A stored notification (DESIGN §10).
 * @typedef {object} InboxNotification
 * @property {string} id
 * @property {string} event
 * @property {unknown} data
 * @property {string | null} category
 * @property {string} channel
 * @property {string} created_at
 * @property {string | null} read_at
 * @property {string | null} seen_at
 * @property {string | null} archived_at
 */

/** @typedef {{notifications: InboxNotification[], next: string | null, counts: InboxCounts}} InboxPage */

/**
 * What `inbox.on("change")` listeners get: the data of an `inbox.changed` event, or
 * `{action: "refetch", …, counts: null}` when changes may have been missed (refetch the list).
 * @typedef {object} InboxChange
 * @property {"added" | "marked" | "deleted" | "refetch"} action
 * @property {string[] | null} ids
 * @property {boolean} all
 * @property {string} [as]
 * @property {InboxCounts | null} counts
 */

/**
 * @typedef {object} Subscription
 * @property {string} channel
 * @property {() => void} unsubscribe
 */

/**
 * @typedef {object} HandlerRecord
 * @property {(event: EventFrame) => void} handler
 * @property {((presence: PresenceInfo) => void) | undefined} onPresence
 */

/**
 * @typedef {object} ChannelEntry
 * @property {string} channel
 * @property {Set<HandlerRecord>} handlers
 * @property {number | null} offset  last offset delivered (or the `since` to resume from)
 * @property {string | null} epoch
 * @property {"pending" | "subscribing" | "subscribed"} status  on the current socket
 * @property {Ref | null} ref  of the subscribe frame in flight
 * @property {Position | null} requested  the `since` sent with that frame
 * @property {number} retries
 * @property {ReturnType<typeof setTimeout> | null} retryTimer
 */

/**
 * @typedef {object} PendingPublish
 * @property {Record<string, unknown>} frame
 * @property {boolean} sent
 * @property {(frame: PublishedFrame) => void} resolve
 * @property {(error: NotifierError) => void} reject
 */

// ---------------------------------------------------------------------------------------------
// The code table (mirror of realtime/codes.py)

/** Connection states, reported by the `state` event. */
export const State = Object.freeze({
  CONNECTING: /** @type {"connecting"} */ ("connecting"),
  CONNECTED: /** @type {"connected"} */ ("connected"),
  DISCONNECTED: /** @type {"disconnected"} */ ("disconnected"),
  CLOSED: /** @type {"closed"} */ ("closed"),
});

/** WebSocket close codes the server sends (realtime/codes.py `CloseCode`). */
export const CloseCodes = Object.freeze({
  GOING_AWAY: 1001,
  INTERNAL_ERROR: 1011,
  SERVICE_RESTART: 1012,
  TRY_AGAIN_LATER: 1013,
  SHUTDOWN: 4000,
  TOKEN_EXPIRED: 4001,
  TOO_SLOW: 4002,
  HEARTBEAT_MISSED: 4003,
  INVALID_TOKEN: 4500,
  FORBIDDEN: 4501,
  PROTOCOL_VIOLATION: 4502,
  TOO_MANY_CONNECTIONS: 4503,
});

/** Stable `code` values of server `error` frames (realtime/codes.py `ErrorCode`). */
export const ErrorCodes = Object.freeze({
  BAD_FRAME: "bad_frame",
  FRAME_TOO_LARGE: "frame_too_large",
  UNKNOWN_OP: "unknown_op",
  BAD_CHANNEL: "bad_channel",
  UNKNOWN_CHANNEL: "unknown_channel",
  FORBIDDEN: "forbidden",
  INVALID_TOKEN: "invalid_token",
  TOKEN_EXPIRED: "token_expired",
  RATE_LIMITED: "rate_limited",
  TOO_MANY_SUBSCRIPTIONS: "too_many_subscriptions",
  TOO_MANY_CONNECTIONS: "too_many_connections",
  NOT_SUBSCRIBED: "not_subscribed",
  ALREADY_SUBSCRIBED: "already_subscribed",
  PAYLOAD_TOO_LARGE: "payload_too_large",
  UNAVAILABLE: "unavailable",
  INTERNAL: "internal",
});

/** Close codes after which the client reconnects (realtime/codes.py `TRANSIENT_CLOSE_CODES`). */
export const TRANSIENT_CLOSE_CODES = /** @type {ReadonlySet<number>} */ (
  new Set([1001, 1006, 1011, 1012, 1013, 4000, 4001, 4002, 4003])
);

/**
 * True when a close code means "do not reconnect" (4500-4999, Centrifuge's terminal range).
 * @param {number} code
 * @returns {boolean}
 */
export function isTerminalClose(code) {
  return code >= 4500 && code <= 4999;
}

/**
 * Delay in milliseconds before reconnect attempt `step` (0-based): full jitter over an
 * exponentially growing window, `min + random() * min * 2^step`, never above `max`.
 * Pure: pass `random` to make it deterministic.
 * @param {number} step
 * @param {number} min
 * @param {number} max
 * @param {() => number} [random] returns a number in [0, 1)
 * @returns {number}
 */
export function backoff(step, min, max, random = Math.random) {
  const exponent = Math.min(Math.max(0, Math.floor(step)), 31);
  const ceiling = Math.max(min, max);
  const window = Math.min(ceiling, min * 2 ** exponent);
  return Math.min(ceiling, Math.floor(min + random() * window));
}

// Token refresh: this long before `exp` (at least 5 s, or 10% of the token's lifetime), but
// never more than half the time left, so a short token is not refreshed in a tight loop.
const REFRESH_MIN_LEAD_MS = 5_000;
const REFRESH_LEAD_FRACTION = 0.1;
// Never sooner than this after the token arrived, whatever the clocks say.
const REFRESH_MIN_DELAY_MS = 1_000;
// setTimeout's largest delay (about 24.8 days); longer waits are taken in steps.
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Milliseconds after receiving `token` at which to refresh it, or `null` when there is no
 * point: an opaque token (not a JWT with a numeric `exp`), or one that has already expired by
 * this clock (the server then ends the connection with 4001 and the client reconnects with a
 * new token). The refresh is due `max(5 s, 10% of the time left)` before `exp`, at most half
 * the time left before it, and never less than 1 s from now. With an `iat` claim, the time left
 * is also capped at `exp - iat`, which does not depend on this machine's clock.
 * Pure: pass `now` to make it deterministic.
 * @param {unknown} token
 * @param {number} [now] milliseconds since the epoch, as `Date.now()`
 * @returns {number | null}
 */
export function refreshDelay(token, now = Date.now()) {
  const claims = jwtClaims(token);
  const exp = claims?.exp;
  if (typeof exp !== "number" || !Number.isFinite(exp)) return null;
  let left = exp * 1000 - now;
  const iat = claims?.iat;
  if (typeof iat === "number" && Number.isFinite(iat) && iat < exp) left = Math.min(left, (exp - iat) * 1000);
  if (!(left > 0)) return null;
  const lead = Math.min(Math.max(REFRESH_MIN_LEAD_MS, left * REFRESH_LEAD_FRACTION), left / 2);
  return Math.max(REFRESH_MIN_DELAY_MS, Math.floor(left - lead));
}

/**
 * The payload of a JWT (`header.payload.signature`, base64url), unverified: the client only
 * reads `exp` to know when to refresh. `null` for anything else (opaque tokens are fine).
 * @param {unknown} token
 * @returns {Record<string, unknown> | null}
 */
function jwtClaims(token) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3 || !/^[A-Za-z0-9_-]+$/.test(parts[1])) return null;
  try {
    const base64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const binary = atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4));
    const json =
      typeof TextDecoder === "function" ? new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0))) : binary;
    const claims = JSON.parse(json);
    return claims && typeof claims === "object" && !Array.isArray(claims) ? claims : null;
  } catch {
    return null;
  }
}

/** An error frame, a terminal close, or a client-side failure, with a stable `code`. */
export class NotifierError extends Error {
  /**
   * @param {string | number} code an `ErrorCodes` value, a close code, or a client code
   *   (`disconnected`, `closed`, `token_unavailable`, `token_expired`, `handler_error`, `bad_frame`)
   * @param {string} message
   * @param {{channel?: string, ref?: Ref, frame?: ServerFrame, cause?: unknown}} [details]
   */
  constructor(code, message, details = {}) {
    super(message);
    this.name = "NotifierError";
    /** @type {string | number} */
    this.code = code;
    /** @type {string | undefined} */
    this.channel = details.channel;
    /** @type {Ref | undefined} */
    this.ref = details.ref;
    /** @type {ServerFrame | undefined} */
    this.frame = details.frame;
    if (details.cause !== undefined) {
      /** @type {unknown} */
      this.cause = details.cause;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The client

const OPEN = 1; // WebSocket.OPEN, the same in browsers and `ws`
const NORMAL_CLOSURE = 1000;
// Until the server's hello says otherwise: twice the server's default 25 s heartbeat.
const DEFAULT_HEARTBEAT_TIMEOUT_MS = 50_000;
// Error codes after which a subscribe is retried on the same connection rather than dropped.
const RETRYABLE_SUBSCRIBE_ERRORS = /** @type {ReadonlySet<string>} */ (new Set([ErrorCodes.UNAVAILABLE, ErrorCodes.INTERNAL]));

const DEFAULTS = Object.freeze({
  token: /** @type {NotifierOptions["token"]} */ (undefined),
  minReconnectDelay: 500,
  maxReconnectDelay: 20_000,
  heartbeatTimeout: /** @type {number | null} */ (null),
  storage: /** @type {PositionStorage | null} */ (null),
  stableAfter: 5_000,
});

export class NotifierClient {
  /**
   * Starts connecting on the next microtask, so listeners added right after construction see
   * every state change.
   * @param {string} url e.g. `wss://host/ws/`
   * @param {NotifierOptions} [options]
   */
  constructor(url, options = {}) {
    const WebSocketImpl = options.WebSocket ?? /** @type {any} */ (globalThis).WebSocket;
    if (typeof WebSocketImpl !== "function") {
      throw new TypeError("no WebSocket implementation: pass options.WebSocket");
    }
    this.url = url;
    /** @private */
    this._options = { ...DEFAULTS, ...stripUndefined(options), WebSocket: /** @type {WebSocketConstructor} */ (WebSocketImpl) };
    /** @private @type {StateName} */
    this._state = State.DISCONNECTED;
    /** @private @type {WebSocketLike | null} */
    this._socket = null;
    /** @private */
    this._open = false;
    /** @private @type {Map<string, Set<(payload: any) => void>>} */
    this._listeners = new Map();
    /** @private @type {Map<string, ChannelEntry>} */
    this._channels = new Map();
    /** @private @type {PendingPublish[]} frames waiting for an open socket */
    this._queue = [];
    /** @private @type {Map<Ref, PendingPublish>} */
    this._pending = new Map();
    /** @private */
    this._nextRef = 1;
    /** @private @type {Ref | null} */
    this._authRef = null;
    /** @private @type {TokenValue} the token of the current socket (`auth`, then each accepted `refresh`) */
    this._currentToken = null;
    /** @private @type {Ref | null} the `refresh` frame awaiting its answer */
    this._refreshRef = null;
    /** @private @type {TokenValue} the token sent with that frame */
    this._refreshToken = null;
    /** @private failed calls of the token function for the pending refresh */
    this._refreshStep = 0;
    /** @private @type {ReturnType<typeof setTimeout> | null} */
    this._refreshTimer = null;
    /** @private reconnect attempts since the last stable connection */
    this._step = 0;
    /** @private bumped to invalidate a connect attempt still fetching its token */
    this._attempt = 0;
    /** @private */
    this._suspended = false;
    /** @private */
    this._heartbeatMs = this._options.heartbeatTimeout ?? DEFAULT_HEARTBEAT_TIMEOUT_MS;
    /** @private */
    this._lastHeard = 0;
    /** @private sent a ping during the current silence */
    this._pinged = false;
    /** @private @type {ReturnType<typeof setTimeout> | null} */
    this._reconnectTimer = null;
    /** @private @type {ReturnType<typeof setTimeout> | null} */
    this._stableTimer = null;
    /** @private @type {ReturnType<typeof setTimeout> | null} */
    this._watchdog = null;
    /** @private @type {Inbox | null} */
    this._inbox = null;
    /** @private @type {Push | null} */
    this._push = null;
    /** The connection id from the server's hello. @type {string | null} */
    this.connectionId = null;
    /** The authenticated user from hello/authenticated, or null. @type {string | null} */
    this.user = null;

    /** @private */
    this._onOnline = () => {
      if (this._state === State.DISCONNECTED && !this._suspended) this._connect();
    };
    /** @private */
    this._onPageHide = () => this._suspend();
    /** @private */
    this._onPageShow = () => {
      if (!this._suspended || this._state === State.CLOSED) return;
      this._suspended = false;
      this._connect();
    };
    this._bindGlobals(true);
    queueMicrotask(() => this._connect());
  }

  /** The current connection state. @returns {StateName} */
  get state() {
    return this._state;
  }

  /** The user's stored notifications (`/api/inbox`), with the connection's token. @returns {Inbox} */
  get inbox() {
    if (!this._inbox) this._inbox = new Inbox(this, this._options.fetch);
    return this._inbox;
  }

  /** Web Push to this browser for the connection's user (`/api/push/…`). @returns {Push} */
  get push() {
    if (!this._push) this._push = new Push(this, this._options.fetch);
    return this._push;
  }

  /**
   * The token for an HTTP request: the socket's current one, else a fresh one from the token
   * option (null: none, the Django session then authenticates).
   * @returns {Promise<TokenValue>}
   */
  async token() {
    if (this._currentToken) return this._currentToken;
    const source = this._options.token;
    return typeof source === "function" ? await source() : source;
  }

  /** The HTTP API's base URL (`apiBase`, or derived from the socket URL). @returns {string} */
  get apiBase() {
    if (this._options.apiBase) return this._options.apiBase.endsWith("/") ? this._options.apiBase : `${this._options.apiBase}/`;
    const url = new URL(this.url);
    url.protocol = url.protocol === "wss:" ? "https:" : "http:";
    url.pathname = url.pathname.replace(/ws\/?$/, "") + "api/";
    url.search = "";
    return url.toString();
  }

  /**
   * Listen to `state`, `error`, `subscribed`, `event`, `presence` or `authenticated`.
   * @template {keyof ClientEvents} K
   * @param {K} name
   * @param {(payload: ClientEvents[K]) => void} fn
   * @returns {this}
   */
  on(name, fn) {
    let set = this._listeners.get(name);
    if (!set) this._listeners.set(name, (set = new Set()));
    set.add(fn);
    return this;
  }

  /**
   * @template {keyof ClientEvents} K
   * @param {K} name
   * @param {(payload: ClientEvents[K]) => void} fn
   * @returns {this}
   */
  off(name, fn) {
    this._listeners.get(name)?.delete(fn);
    return this;
  }

  /**
   * Subscribe `handler` to a channel. It receives whole `event` frames, in offset order, each
   * once, across reconnects. Several subscriptions to one channel share one server
   * subscription; `since` applies only to the first.
   * @param {string} channel
   * @param {(event: EventFrame) => void} handler
   * @param {{since?: Position | null, onPresence?: (presence: PresenceInfo) => void}} [options]
   *   `since`: resume after this position; `onPresence`: called with the channel's `join` and
   *   `leave` frames (namespaces with presence events)
   * @returns {Subscription}
   */
  subscribe(channel, handler, options = {}) {
    if (this._state === State.CLOSED) throw new NotifierError("closed", "the client is closed");
    let entry = this._channels.get(channel);
    if (!entry) {
      const start = options.since ?? this._loadPosition(channel);
      entry = {
        channel,
        handlers: new Set(),
        offset: start ? start.offset : null,
        epoch: start ? start.epoch : null,
        status: "pending",
        ref: null,
        requested: null,
        retries: 0,
        retryTimer: null,
      };
      this._channels.set(channel, entry);
      if (this._open) this._sendSubscribe(entry);
    }
    /** @type {HandlerRecord} */
    const record = { handler, onPresence: options.onPresence };
    entry.handlers.add(record);
    const current = entry;
    return { channel, unsubscribe: () => this._unsubscribe(current, record) };
  }

  /**
   * Publish an event (only on namespaces that allow client publishing). Queued while
   * disconnected; rejected if the connection drops before the server answers.
   * @param {string} channel
   * @param {string} event
   * @param {unknown} [data]
   * @returns {Promise<PublishedFrame>}
   */
  publish(channel, event, data) {
    if (this._state === State.CLOSED) {
      return Promise.reject(new NotifierError("closed", "the client is closed"));
    }
    return new Promise((resolve, reject) => {
      const ref = this._ref();
      /** @type {PendingPublish} */
      const pending = { frame: { op: "publish", channel, event, data, ref }, sent: false, resolve, reject };
      this._pending.set(ref, pending);
      if (this._open) this._sendPending(pending);
      else this._queue.push(pending);
    });
  }

  /** Close for good: no reconnect; pending publishes are rejected. */
  close() {
    if (this._state === State.CLOSED) return;
    this._shutdown(new NotifierError("closed", "the client was closed"));
  }

  // -- connecting ------------------------------------------------------------------------------

  /** @private */
  async _connect() {
    if (this._state === State.CLOSED || this._suspended || this._socket) return;
    this._clearTimer("_reconnectTimer");
    const attempt = ++this._attempt;
    this._setState(State.CONNECTING);
    /** @type {TokenValue} */
    let token;
    try {
      const source = this._options.token;
      token = typeof source === "function" ? await source() : source;
    } catch (cause) {
      if (attempt !== this._attempt) return;
      this._emitError(new NotifierError("token_unavailable", "the token function failed", { cause }));
      this._scheduleReconnect();
      return;
    }
    if (attempt !== this._attempt || this._state !== State.CONNECTING) return;
    /** @type {WebSocketLike} */
    let socket;
    try {
      socket = new this._options.WebSocket(this.url);
    } catch (cause) {
      // A bad URL will not get better by retrying.
      this._shutdown(new NotifierError("bad_url", `cannot open a WebSocket to ${this.url}`, { cause }));
      return;
    }
    this._socket = socket;
    socket.addEventListener("open", () => socket === this._socket && this._onOpen(token));
    socket.addEventListener("message", (ev) => socket === this._socket && this._onMessage(ev.data));
    socket.addEventListener("close", (ev) => socket === this._socket && this._onClose(ev.code, ev.reason));
    socket.addEventListener("error", () => {}); // a close event always follows
    this._heard();
    this._armWatchdog();
  }

  /**
   * @private
   * @param {TokenValue} token
   */
  _onOpen(token) {
    this._open = true;
    this._authRef = null;
    this._currentToken = token;
    if (token) {
      // First frame, so the server has processed it before any subscribe (frames are in order).
      this._authRef = this._ref();
      this._send({ op: "auth", token, ref: this._authRef });
    }
    for (const entry of this._channels.values()) this._sendSubscribe(entry);
    const queued = this._queue;
    this._queue = [];
    for (const pending of queued) this._sendPending(pending);
  }

  /**
   * @private
   * @param {number} code
   * @param {string} reason
   */
  _onClose(code, reason) {
    this._detach();
    if (this._state === State.CLOSED) return;
    if (isTerminalClose(code)) {
      this._shutdown(new NotifierError(code, reason || `the server closed the connection (${code})`));
    } else if (code === CloseCodes.TOKEN_EXPIRED && typeof this._options.token !== "function") {
      this._shutdown(new NotifierError(code, "the token expired and options.token is not a function to renew it"));
    } else {
      this._scheduleReconnect();
    }
  }

  /**
   * Forget the current socket: its late events are ignored from now on.
   * @private
   */
  _detach() {
    this._socket = null;
    this._open = false;
    this._clearTimer("_watchdog");
    this._clearTimer("_stableTimer");
    this._clearTimer("_refreshTimer");
    this._authRef = null;
    this._currentToken = null;
    this._refreshRef = null;
    this._refreshToken = null;
    this._refreshStep = 0;
    for (const entry of this._channels.values()) {
      entry.status = "pending";
      entry.ref = null;
      this._clearRetry(entry);
    }
    const lost = new NotifierError("disconnected", "the connection dropped before the server answered");
    for (const [ref, pending] of this._pending) {
      if (!pending.sent) continue;
      this._pending.delete(ref);
      pending.reject(lost);
    }
  }

  /**
   * Close the socket from our side and handle it as a disconnect with `code` right away (a
   * dead connection may take minutes to deliver its close event).
   * @private
   * @param {number} code
   * @param {string} reason
   */
  _drop(code, reason) {
    const socket = this._socket;
    if (!socket) return;
    this._socket = null;
    try {
      socket.close(code, reason);
    } catch {
      // already closing
    }
    this._onClose(code, reason);
  }

  /** @private */
  _scheduleReconnect() {
    this._setState(State.DISCONNECTED);
    if (this._suspended || this._reconnectTimer) return;
    const { minReconnectDelay, maxReconnectDelay } = this._options;
    const delay = backoff(this._step++, minReconnectDelay, maxReconnectDelay);
    this._reconnectTimer = setTimeout(() => {
      this._reconnectTimer = null;
      this._connect();
    }, delay);
  }

  /**
   * @private
   * @param {NotifierError} reason
   */
  _shutdown(reason) {
    this._attempt++;
    this._clearTimer("_reconnectTimer");
    const socket = this._socket;
    this._detach();
    if (socket) {
      try {
        socket.close(NORMAL_CLOSURE, "client closed");
      } catch {
        // already closing
      }
    }
    for (const entry of this._channels.values()) this._clearRetry(entry);
    this._channels.clear();
    for (const pending of this._pending.values()) pending.reject(reason);
    this._pending.clear();
    this._queue = [];
    this._bindGlobals(false);
    this._setState(State.CLOSED);
    if (reason.code !== "closed") this._emitError(reason);
  }

  /**
   * Page hidden (possibly into the back/forward cache): close cleanly, stay quiet until shown.
   * @private
   */
  _suspend() {
    if (this._state === State.CLOSED) return;
    this._suspended = true;
    this._attempt++;
    this._clearTimer("_reconnectTimer");
    const socket = this._socket;
    this._detach();
    if (socket) {
      try {
        socket.close(NORMAL_CLOSURE, "page hidden");
      } catch {
        // already closing
      }
    }
    this._setState(State.DISCONNECTED);
  }

  /**
   * @private
   * @param {boolean} on
   */
  _bindGlobals(on) {
    const g = /** @type {any} */ (globalThis);
    const method = on ? "addEventListener" : "removeEventListener";
    if (typeof g[method] === "function") g[method]("online", this._onOnline);
    if (typeof g.window !== "undefined" && typeof g.window[method] === "function") {
      g.window[method]("pagehide", this._onPageHide);
      g.window[method]("pageshow", this._onPageShow);
    }
  }

  // -- heartbeat -------------------------------------------------------------------------------

  /** @private */
  _heard() {
    this._lastHeard = Date.now();
    this._pinged = false;
  }

  /**
   * One timer per connection, re-armed lazily, rather than a new timer per frame. After half
   * the timeout (one server heartbeat) of silence the client pings: the `pong` proves the
   * connection alive even when the server's own pings are late or not running.
   * @private
   */
  _armWatchdog() {
    this._clearTimer("_watchdog");
    const half = this._heartbeatMs / 2;
    const due = this._lastHeard + (this._pinged ? this._heartbeatMs : half);
    this._watchdog = setTimeout(() => {
      this._watchdog = null;
      if (!this._socket) return;
      const silent = Date.now() - this._lastHeard;
      if (silent >= this._heartbeatMs) {
        this._drop(CloseCodes.HEARTBEAT_MISSED, "heartbeat timeout");
        return;
      }
      if (silent >= half && !this._pinged && this._open) {
        this._pinged = true;
        this._send({ op: "ping" });
      }
      this._armWatchdog();
    }, Math.max(1, due - Date.now()));
  }

  // -- frames ----------------------------------------------------------------------------------

  /**
   * @private
   * @param {unknown} data
   */
  _onMessage(data) {
    this._heard();
    /** @type {ServerFrame} */
    let frame;
    try {
      frame = JSON.parse(typeof data === "string" ? data : String(data));
    } catch (cause) {
      this._emitError(new NotifierError("bad_frame", "the server sent a frame that is not JSON", { cause }));
      return;
    }
    if (!frame || typeof frame !== "object" || typeof frame.type !== "string") return;
    switch (frame.type) {
      case "hello":
        return this._onHello(frame);
      case "ping":
        return this._send({ op: "pong" });
      case "authenticated":
        return this._onAuthenticated(frame);
      case "subscribed":
        return this._onSubscribed(frame);
      case "event":
        return this._onEvent(/** @type {EventFrame} */ (/** @type {unknown} */ (frame)));
      case "published":
        return this._onPublished(frame);
      case "join":
      case "leave":
        return this._onPresence(frame);
      case "error":
        return this._onErrorFrame(frame);
      default:
        return; // pong, unsubscribed, and frame types newer than this client
    }
  }

  /**
   * @private
   * @param {ServerFrame} frame
   */
  _onHello(frame) {
    this.connectionId = typeof frame.connection === "string" ? frame.connection : null;
    this.user = typeof frame.user === "string" ? frame.user : null;
    if (this._options.heartbeatTimeout == null && typeof frame.heartbeat === "number" && frame.heartbeat > 0) {
      this._heartbeatMs = frame.heartbeat * 2000;
      this._armWatchdog();
    }
    this._clearTimer("_stableTimer");
    this._stableTimer = setTimeout(() => {
      this._stableTimer = null;
      this._step = 0;
    }, this._options.stableAfter);
    this._setState(State.CONNECTED);
  }

  /**
   * @private
   * @param {ServerFrame} frame
   */
  _onSubscribed(frame) {
    const entry = typeof frame.channel === "string" ? this._channels.get(frame.channel) : undefined;
    if (!entry) return;
    const latest = typeof frame.offset === "number" ? frame.offset : 0;
    const epoch = typeof frame.epoch === "string" ? frame.epoch : "";
    const recovered = frame.recovered !== false;
    if (entry.status === "subscribed" && !recovered) {
      // Mid-stream: the server skipped events its history no longer had. Events go on after
      // `offset`; the page is told, as on a subscribe, so it can refetch its state.
      entry.epoch = epoch;
      entry.offset = latest;
      this._savePosition(entry);
      this._emit("subscribed", { channel: entry.channel, recovered, offset: latest, epoch });
      return;
    }
    if (entry.status !== "subscribing") return;
    entry.status = "subscribed";
    entry.retries = 0;
    entry.epoch = epoch;
    // Recovered: the events after `since` follow as ordinary event frames, so keep `since` as
    // the last offset we have. Otherwise nothing is replayed and we start at the latest offset.
    entry.offset = recovered && entry.requested ? entry.requested.offset : latest;
    this._savePosition(entry);
    this._emit("subscribed", { channel: entry.channel, recovered, offset: latest, epoch });
  }

  /**
   * @private
   * @param {EventFrame} frame
   */
  _onEvent(frame) {
    const entry = this._channels.get(frame.channel);
    // Not subscribed on this socket (yet, or any more): anything here predates our subscribe.
    if (!entry || entry.status !== "subscribed") return;
    if (typeof frame.epoch === "string" && frame.epoch !== entry.epoch) {
      // History restarted: offsets count from 1 again. Today's server says so first with a
      // `subscribed` frame (recovered: false), which set the epoch; an older one did not, so the
      // page is told here, the same way, unless there was no history before (no epoch).
      const offset = typeof frame.offset === "number" ? Math.max(0, frame.offset - 1) : 0;
      if (entry.epoch) {
        this._onSubscribed({ type: "subscribed", channel: entry.channel, offset, epoch: frame.epoch, recovered: false });
      } else {
        entry.epoch = frame.epoch;
        entry.offset = offset;
      }
    }
    if (typeof frame.offset === "number") {
      if (entry.offset !== null && frame.offset <= entry.offset) return; // duplicate
      entry.offset = frame.offset;
      this._savePosition(entry);
    }
    for (const record of [...entry.handlers]) {
      try {
        record.handler(frame);
      } catch (cause) {
        this._emitError(new NotifierError("handler_error", "a subscription handler threw", { channel: entry.channel, cause }));
      }
    }
    this._emit("event", frame);
  }

  /**
   * The answer to `auth` or `refresh`: schedule the next refresh from the accepted token's `exp`.
   * @private
   * @param {ServerFrame} frame
   */
  _onAuthenticated(frame) {
    this.user = typeof frame.user === "string" ? frame.user : null;
    const ref = frame.ref;
    const refreshed = ref !== undefined && ref === this._refreshRef;
    if (refreshed) {
      this._currentToken = this._refreshToken;
      this._refreshRef = null;
      this._refreshToken = null;
      this._scheduleRefresh(this._currentToken);
    } else if (ref !== undefined && ref === this._authRef) {
      this._scheduleRefresh(this._currentToken);
    }
    this._emit("authenticated", { user: this.user, refreshed });
  }

  /**
   * @private
   * @param {TokenValue} token
   */
  _scheduleRefresh(token) {
    this._clearTimer("_refreshTimer");
    this._refreshStep = 0;
    if (typeof this._options.token !== "function") return; // a string cannot be renewed
    const delay = refreshDelay(token);
    if (delay !== null) this._armRefresh(Date.now() + delay);
  }

  /**
   * @private
   * @param {number} due Date.now() time of the refresh
   */
  _armRefresh(due) {
    this._clearTimer("_refreshTimer");
    this._refreshTimer = setTimeout(
      () => {
        this._refreshTimer = null;
        if (Date.now() < due) this._armRefresh(due);
        else this._refresh();
      },
      Math.min(MAX_TIMER_MS, Math.max(0, due - Date.now())),
    );
  }

  /**
   * Get a fresh token from the token function and send `{"op": "refresh"}` on this socket.
   * @private
   */
  async _refresh() {
    const socket = this._socket;
    const source = this._options.token;
    if (!socket || !this._open || typeof source !== "function") return;
    /** @type {TokenValue} */
    let token;
    try {
      token = await source();
    } catch (cause) {
      if (socket !== this._socket) return;
      this._emitError(new NotifierError("token_unavailable", "the token function failed", { cause }));
      const { minReconnectDelay, maxReconnectDelay } = this._options;
      this._armRefresh(Date.now() + backoff(this._refreshStep++, minReconnectDelay, maxReconnectDelay));
      return;
    }
    // No token: nothing to refresh with. The server ends the connection at expiry (4001) and
    // the reconnect asks the token function again.
    if (socket !== this._socket || !this._open || !token) return;
    if (token === this._currentToken) {
      // A cached token, not renewed yet: ask again later (half the time left, at least 1 s).
      this._scheduleRefresh(token);
      return;
    }
    this._refreshRef = this._ref();
    this._refreshToken = token;
    this._send({ op: "refresh", token, ref: this._refreshRef });
  }

  /**
   * A `join` or `leave` frame, for the subscription's `onPresence` and the `presence` event.
   * @private
   * @param {ServerFrame} frame
   */
  _onPresence(frame) {
    const entry = typeof frame.channel === "string" ? this._channels.get(frame.channel) : undefined;
    if (!entry || entry.status === "pending") return;
    /** @type {PresenceInfo} */
    const presence = {
      type: frame.type === "join" ? "join" : "leave",
      channel: entry.channel,
      user: typeof frame.user === "string" ? frame.user : "",
    };
    for (const record of [...entry.handlers]) {
      if (!record.onPresence) continue;
      try {
        record.onPresence(presence);
      } catch (cause) {
        this._emitError(new NotifierError("handler_error", "an onPresence handler threw", { channel: entry.channel, cause }));
      }
    }
    this._emit("presence", presence);
  }

  /**
   * @private
   * @param {ServerFrame} frame
   */
  _onPublished(frame) {
    const pending = frame.ref === undefined ? undefined : this._pending.get(frame.ref);
    if (!pending || frame.ref === undefined) return;
    this._pending.delete(frame.ref);
    pending.resolve(/** @type {PublishedFrame} */ (/** @type {unknown} */ (frame)));
  }

  /**
   * @private
   * @param {ServerFrame} frame
   */
  _onErrorFrame(frame) {
    const code = typeof frame.code === "string" ? frame.code : "unknown";
    const message = typeof frame.message === "string" ? frame.message : code;
    const ref = frame.ref;
    const pending = ref === undefined ? undefined : this._pending.get(ref);
    if (pending && ref !== undefined) {
      this._pending.delete(ref);
      pending.reject(new NotifierError(code, message, { ref, frame }));
      return;
    }
    if (ref !== undefined && ref === this._refreshRef) {
      // token_expired, invalid_token, forbidden (another user), or a server without `refresh`:
      // fall back to a new connection, which calls the token function again.
      this._refreshRef = null;
      this._refreshToken = null;
      this._emitError(new NotifierError(code, `token refresh refused: ${message}`, { ref, frame }));
      this._drop(CloseCodes.TOKEN_EXPIRED, "token refresh refused");
      return;
    }
    // An unsolicited token_expired error frame is handled like close 4001.
    if (code === ErrorCodes.TOKEN_EXPIRED) {
      this._drop(CloseCodes.TOKEN_EXPIRED, message);
      return;
    }
    if (ref !== undefined && ref === this._authRef) {
      // Subscriptions that need the identity will be refused on their own; public ones go on.
      this._emitError(new NotifierError(code, `authentication refused: ${message}`, { ref, frame }));
      return;
    }
    const entry = ref === undefined ? undefined : [...this._channels.values()].find((e) => e.ref === ref);
    if (entry) {
      this._onSubscribeError(entry, code);
      this._emitError(new NotifierError(code, message, { ref, frame, channel: entry.channel }));
      return;
    }
    this._emitError(new NotifierError(code, message, { ref, frame }));
  }

  /**
   * A refused subscribe: retry later on a transient error, otherwise give the channel up.
   * @private
   * @param {ChannelEntry} entry
   * @param {string} code
   */
  _onSubscribeError(entry, code) {
    entry.ref = null;
    entry.status = "pending";
    if (!RETRYABLE_SUBSCRIBE_ERRORS.has(code)) {
      this._channels.delete(entry.channel);
      return;
    }
    const { minReconnectDelay, maxReconnectDelay } = this._options;
    entry.retryTimer = setTimeout(() => {
      entry.retryTimer = null;
      if (this._open && this._channels.get(entry.channel) === entry && entry.status === "pending") {
        this._sendSubscribe(entry);
      }
    }, backoff(entry.retries++, minReconnectDelay, maxReconnectDelay));
  }

  /**
   * @private
   * @param {ChannelEntry} entry
   */
  _sendSubscribe(entry) {
    entry.ref = this._ref();
    entry.status = "subscribing";
    entry.requested = entry.offset === null ? null : { offset: entry.offset, epoch: entry.epoch ?? "" };
    /** @type {Record<string, unknown>} */
    const frame = { op: "subscribe", channel: entry.channel, ref: entry.ref };
    if (entry.requested) frame.since = entry.requested;
    this._send(frame);
  }

  /**
   * @private
   * @param {ChannelEntry} entry
   * @param {HandlerRecord} record
   */
  _unsubscribe(entry, record) {
    if (!entry.handlers.delete(record) || entry.handlers.size > 0) return;
    if (this._channels.get(entry.channel) !== entry) return;
    this._channels.delete(entry.channel);
    this._clearRetry(entry);
    this._removePosition(entry.channel);
    if (this._open && entry.status !== "pending") {
      this._send({ op: "unsubscribe", channel: entry.channel });
    }
  }

  /**
   * @private
   * @param {PendingPublish} pending
   */
  _sendPending(pending) {
    pending.sent = true;
    this._send(pending.frame);
  }

  /**
   * @private
   * @param {Record<string, unknown>} frame
   */
  _send(frame) {
    const socket = this._socket;
    if (!socket || socket.readyState !== OPEN) return;
    try {
      socket.send(JSON.stringify(frame));
    } catch (cause) {
      this._emitError(new NotifierError("bad_frame", "could not send a frame", { cause }));
    }
  }

  /** @private @returns {number} */
  _ref() {
    return this._nextRef++;
  }

  // -- positions -------------------------------------------------------------------------------

  /**
   * @private
   * @param {string} channel
   */
  _storageKey(channel) {
    // Without the query string: a `?token=` has no business in storage keys.
    return `notifier:${this.url.split("?")[0]}#${channel}`;
  }

  /**
   * @private
   * @param {string} channel
   * @returns {Position | null}
   */
  _loadPosition(channel) {
    const storage = this._options.storage;
    if (!storage) return null;
    try {
      const raw = storage.getItem(this._storageKey(channel));
      const value = raw ? JSON.parse(raw) : null;
      if (value && typeof value.offset === "number" && typeof value.epoch === "string") {
        return { offset: value.offset, epoch: value.epoch };
      }
    } catch {
      // unreadable or unavailable storage: start fresh
    }
    return null;
  }

  /**
   * @private
   * @param {ChannelEntry} entry
   */
  _savePosition(entry) {
    const storage = this._options.storage;
    if (!storage || entry.offset === null) return;
    try {
      storage.setItem(this._storageKey(entry.channel), JSON.stringify({ offset: entry.offset, epoch: entry.epoch ?? "" }));
    } catch {
      // quota or privacy mode: positions stay in memory
    }
  }

  /**
   * @private
   * @param {string} channel
   */
  _removePosition(channel) {
    try {
      this._options.storage?.removeItem(this._storageKey(channel));
    } catch {
      // see _savePosition
    }
  }

  // -- small helpers ---------------------------------------------------------------------------

  /**
   * @private
   * @param {StateName} next
   */
  _setState(next) {
    if (this._state === next) return;
    const oldState = this._state;
    this._state = next;
    this._emit("state", { oldState, newState: next });
  }

  /**
   * @private
   * @template {keyof ClientEvents} K
   * @param {K} name
   * @param {ClientEvents[K]} payload
   */
  _emit(name, payload) {
    const set = this._listeners.get(name);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(payload);
      } catch (err) {
        console.error(`notifier: a "${name}" listener threw`, err);
      }
    }
  }

  /**
   * @private
   * @param {NotifierError} error
   */
  _emitError(error) {
    if (this._listeners.get("error")?.size) this._emit("error", error);
    else console.error("notifier:", error);
  }

  /**
   * @private
   * @param {"_reconnectTimer" | "_stableTimer" | "_watchdog" | "_refreshTimer"} name
   */
  _clearTimer(name) {
    const timer = this[name];
    if (timer !== null) clearTimeout(timer);
    this[name] = null;
  }

  /**
   * @private
   * @param {ChannelEntry} entry
   */
  _clearRetry(entry) {
    if (entry.retryTimer !== null) clearTimeout(entry.retryTimer);
    entry.retryTimer = null;
  }
}

// ---------------------------------------------------------------------------------------------
// The inbox

const INBOX_CHANGED = "inbox.changed";

/** A user's stored notifications over HTTP, and their changes live from `user:<id>`. */
export class Inbox {
  /**
   * @param {NotifierClient} client
   * @param {typeof fetch} [fetchImpl] Defaults to `globalThis.fetch`.
   */
  constructor(client, fetchImpl) {
    /** @private */
    this._client = client;
    /** @private */
    this._fetch = fetchImpl;
    /** @private @type {Set<(change: InboxChange) => void>} */
    this._listeners = new Set();
    /** @private @type {Subscription | null} */
    this._feed = null;
    /** @private @type {string | null} the user whose channel feeds the changes */
    this._feedUser = null;
    /** @private */
    this._follow = () => this._ensureFeed();
    /** @private @param {SubscribedInfo} info */
    this._onSubscribed = (info) => {
      if (this._feed && info.channel === this._feed.channel && !info.recovered) {
        this._emit({ action: "refetch", ids: null, all: true, counts: null });
      }
    };
  }

  /**
   * Newest first. `status`: "unread", "read", "archived" or "all" (default: all but archived).
   * @param {{status?: string, category?: string, limit?: number, cursor?: string | null}} [query]
   * @returns {Promise<InboxPage>}
   */
  list(query = {}) {
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(query)) {
      if (value !== undefined && value !== null) params.set(name, String(value));
    }
    const search = params.toString();
    return this._request("GET", `inbox${search ? `?${search}` : ""}`);
  }

  /** @returns {Promise<InboxCounts>} */
  counts() {
    return this._request("GET", "inbox/counts");
  }

  /**
   * @param {string[]} ids
   * @param {"read" | "unread" | "seen" | "archived" | "unarchived"} as
   * @returns {Promise<{updated: number, counts: InboxCounts}>}
   */
  mark(ids, as) {
    return this._request("POST", "inbox/mark", { ids, as });
  }

  /**
   * @param {"read" | "seen" | "archived"} as
   * @param {{category?: string}} [options]
   * @returns {Promise<{updated: number, counts: InboxCounts}>}
   */
  markAll(as, options = {}) {
    return this._request("POST", "inbox/mark", { all: true, as, ...options });
  }

  /** @param {string} id @returns {Promise<void>} */
  async remove(id) {
    await this._request("DELETE", `inbox/${encodeURIComponent(id)}`);
  }

  /**
   * Listen to changes (from any tab or device of the user): `inbox.changed` events.
   * @param {"change"} name
   * @param {(change: InboxChange) => void} fn
   * @returns {this}
   */
  on(name, fn) {
    if (name !== "change") throw new TypeError(`unknown inbox event ${name}`);
    this._listeners.add(fn);
    if (this._listeners.size === 1) {
      this._client.on("state", this._follow).on("authenticated", this._follow).on("subscribed", this._onSubscribed);
      this._ensureFeed();
    }
    return this;
  }

  /**
   * @param {"change"} name
   * @param {(change: InboxChange) => void} fn
   * @returns {this}
   */
  off(name, fn) {
    this._listeners.delete(fn);
    if (this._listeners.size === 0) {
      this._client.off("state", this._follow).off("authenticated", this._follow).off("subscribed", this._onSubscribed);
      this._feed?.unsubscribe();
      this._feed = null;
      this._feedUser = null;
    }
    return this;
  }

  /** @private Follow the channel of the connection's user, once it is known. */
  _ensureFeed() {
    const user = this._client.user;
    if (!user || user === this._feedUser || this._client.state === State.CLOSED) return;
    this._feed?.unsubscribe();
    this._feedUser = user;
    this._feed = this._client.subscribe(`user:${user}`, (event) => {
      if (event.event === INBOX_CHANGED) this._emit(/** @type {InboxChange} */ (event.data));
    });
  }

  /** @private @param {InboxChange} change */
  _emit(change) {
    for (const fn of [...this._listeners]) {
      try {
        fn(change);
      } catch (err) {
        console.error('notifier: an inbox "change" listener threw', err);
      }
    }
  }

  /**
   * @private
   * @param {string} method
   * @param {string} path
   * @param {unknown} [body]
   * @returns {Promise<any>}
   */
  _request(method, path, body) {
    return apiRequest(this._client, this._fetch, method, path, body);
  }
}

/**
 * A call to the HTTP API as the connection's user: its token as `Authorization: Bearer`, or
 * else the page's Django session (with its CSRF token). Errors are NotifierErrors with the
 * answer's stable `code`.
 * @param {NotifierClient} client
 * @param {typeof fetch | undefined} fetchImpl
 * @param {string} method
 * @param {string} path
 * @param {unknown} [body]
 * @returns {Promise<any>}
 */
async function apiRequest(client, fetchImpl, method, path, body) {
  const doFetch = fetchImpl ?? globalThis.fetch;
  /** @type {Record<string, string>} */
  const headers = { Accept: "application/json" };
  const token = await client.token();
  if (token) headers.Authorization = `Bearer ${token}`;
  else {
    const csrf = csrfToken();
    if (csrf) headers["X-CSRFToken"] = csrf;
  }
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await doFetch(new URL(path, client.apiBase), {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return undefined;
  /** @type {any} */
  let answer = null;
  try {
    answer = await response.json();
  } catch {
    // not JSON: answered below by the status
  }
  if (!response.ok) {
    const code = typeof answer?.code === "string" ? answer.code : `http_${response.status}`;
    throw new NotifierError(code, answer?.message ?? `HTTP ${response.status}`, answer?.details ?? {});
  }
  return answer;
}

// Web Push

/**
 * @typedef {"unsupported" | "denied" | "prompt" | "subscribed" | "unsubscribed"} PushState
 * `unsupported`: no service worker, Push API or notifications here; `denied`: the user blocked
 * notifications; `prompt`: not asked yet; then whether this browser has a subscription.
 */

/**
 * @typedef {object} PushOptions
 * @property {ServiceWorkerRegistration | string} [serviceWorker] The registration whose push
 *   manager subscribes, or the URL of a service worker script to register (on your origin:
 *   copy `notifier-sw.js` there, or `importScripts` it from your own worker). Default: the
 *   page's ready registration.
 */

/** Web Push for the connection's user: subscribe this browser, unsubscribe it, ask its state. */
export class Push {
  /**
   * @param {NotifierClient} client
   * @param {typeof fetch} [fetchImpl]
   */
  constructor(client, fetchImpl) {
    /** @private */
    this._client = client;
    /** @private */
    this._fetch = fetchImpl;
  }

  /** Whether this browser can get pushes at all. @returns {boolean} */
  static supported() {
    const g = /** @type {any} */ (globalThis);
    return Boolean(g.navigator?.serviceWorker && g.PushManager && g.Notification);
  }

  /** @param {PushOptions} [options] @returns {Promise<PushState>} */
  async state(options = {}) {
    if (!Push.supported()) return "unsupported";
    const permission = /** @type {any} */ (globalThis).Notification.permission;
    if (permission === "denied") return "denied";
    if (permission !== "granted") return "prompt";
    const registration = await this._registration(options.serviceWorker);
    return (await registration.pushManager.getSubscription()) ? "subscribed" : "unsubscribed";
  }

  /**
   * Ask for permission (if not given yet), subscribe this browser with the service's key and
   * register the subscription for the user. Idempotent: an existing subscription is reused,
   * one made with another key is replaced.
   * @param {PushOptions} [options]
   * @returns {Promise<{id: number, endpoint: string}>}
   */
  async enable(options = {}) {
    if (!Push.supported()) throw new NotifierError("push_unsupported", "this browser cannot receive Web Push");
    const g = /** @type {any} */ (globalThis);
    const permission = g.Notification.permission === "granted" ? "granted" : await g.Notification.requestPermission();
    if (permission !== "granted") throw new NotifierError("push_denied", "notifications are not allowed on this site");
    const registration = await this._registration(options.serviceWorker);
    const { public_key: publicKey } = await apiRequest(this._client, this._fetch, "GET", "push/key");
    const key = base64UrlToBytes(publicKey);
    let subscription = await registration.pushManager.getSubscription();
    if (subscription && !sameBytes(subscription.options?.applicationServerKey, key)) {
      await subscription.unsubscribe();
      subscription = null;
    }
    subscription ??= await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
    const registered = await apiRequest(this._client, this._fetch, "POST", "push/subscriptions", subscription.toJSON());
    return { id: registered.id, endpoint: subscription.endpoint };
  }

  /**
   * Stop pushes to this browser: forget the subscription on the service and in the browser.
   * @param {PushOptions} [options]
   * @returns {Promise<boolean>} whether there was one
   */
  async disable(options = {}) {
    if (!Push.supported()) return false;
    const registration = await this._registration(options.serviceWorker);
    const subscription = await registration.pushManager.getSubscription();
    if (!subscription) return false;
    const { subscriptions } = await apiRequest(this._client, this._fetch, "GET", "push/subscriptions");
    for (const known of subscriptions) {
      if (known.endpoint === subscription.endpoint) {
        await apiRequest(this._client, this._fetch, "DELETE", `push/subscriptions/${known.id}`);
      }
    }
    await subscription.unsubscribe();
    return true;
  }

  /**
   * @private
   * @param {ServiceWorkerRegistration | string | undefined} serviceWorker
   * @returns {Promise<ServiceWorkerRegistration>}
   */
  async _registration(serviceWorker) {
    const container = /** @type {any} */ (globalThis).navigator.serviceWorker;
    if (typeof serviceWorker === "string") return container.register(serviceWorker);
    return serviceWorker ?? container.ready;
  }
}

/** @param {string} text @returns {Uint8Array<ArrayBuffer>} */
function base64UrlToBytes(text) {
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (text.length % 4)) % 4);
  const binary = atob(base64);
  const bytes = new Uint8Array(new ArrayBuffer(binary.length));
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** @param {ArrayBuffer | null | undefined} buffer @param {Uint8Array} bytes @returns {boolean} */
function sameBytes(buffer, bytes) {
  if (!buffer) return false;
  const other = new Uint8Array(buffer);
  return other.length === bytes.length && other.every((b, i) => b === bytes[i]);
}

/** Django's CSRF cookie, for requests the session authenticates. @returns {string | null} */
function csrfToken() {
  const cookies = /** @type {any} */ (globalThis).document?.cookie;
  if (typeof cookies !== "string") return null;
  const found = cookies.split(";").map((c) => c.trim()).find((c) => c.startsWith("csrftoken="));
  return found ? decodeURIComponent(found.slice("csrftoken=".length)) : null;
}

/**
 * @template {object} T
 * @param {T} options
 * @returns {Partial<T>}
 */
function stripUndefined(options) {
  return /** @type {Partial<T>} */ (Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)));
}
