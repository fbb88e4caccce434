// ondoki's notification client: one WebSocket that answers pings, resumes from its last
// position on every reconnect, backs off with jitter, and follows the server's close codes.
// An ES module with no dependencies: it loads in a browser with <script type="module"> and
// in Node given a WebSocket implementation (e.g. the `ws` package).

/** The WebSocket subprotocol of the notification protocol. */
export const SUBPROTOCOL = "ondoki.v1";

/** Every close code the client tells apart, in one place. */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ABNORMAL: 1006, // no close frame: the network, or a refused upgrade
  NOT_UTF8: 1007, // a message that was not UTF-8 (a client bug)
  POLICY: 1008, // authentication failed (older servers)
  TOO_BIG: 1009,
  INTERNAL: 1011, // backend outage: reconnect and resume
  RESTART: 1012, // the server is restarting: reconnect (elsewhere) and resume
  PING_TIMEOUT: 4000, // no pong in time: reconnect and resume
  SESSION_ENDED: 4001, // logged out or expired: a new token, or stop
  INVALID_TOKEN: 4003, // the token was never valid: a new token, or stop
  TOO_SLOW: 4008, // could not keep up: reconnect and resume
  TOO_MANY_SOCKETS: 4029, // the user has too many sockets open: said, then retried with backoff
});

// Codes after which the same token cannot work again.
const AUTH_CODES = new Set([CloseCode.POLICY, CloseCode.SESSION_ENDED, CloseCode.INVALID_TOKEN]);

/** Default reconnection delays, in milliseconds. */
export const DEFAULT_BACKOFF = Object.freeze({ initial: 250, max: 30000, factor: 2 });

/**
 * The delay before reconnection attempt `attempt` (0 for the first): "full jitter", a random
 * time between 0 and the capped exponential bound, so that clients a restart dropped together
 * do not come back together.
 */
export function backoffDelay(attempt, backoff = DEFAULT_BACKOFF, random = Math.random) {
  const bound = Math.min(backoff.max, backoff.initial * backoff.factor ** attempt);
  return Math.floor(random() * bound);
}

/** The /ws URL for `url`: a ws(s):// URL as it is, an http(s):// base with /ws added. */
export function socketUrl(url) {
  const parsed = new URL(url);
  if (parsed.protocol === "http:" || parsed.protocol === "https:") {
    parsed.protocol = parsed.protocol === "https:" ? "wss:" : "ws:";
    if (!parsed.pathname.endsWith("/ws")) {
      parsed.pathname = `${parsed.pathname.replace(/\/$/, "")}/ws`;
    }
  }
  return parsed.toString();
}

// A connection that lived this long resets the backoff: it was not a flapping failure.
const STABLE_MS = 5000;

export class OndokiClient {
  /**
   * @param {object} options
   * @param {string} options.url the service (http(s)://host) or its socket (ws(s)://host/ws)
   * @param {string} [options.token] a session token
   * @param {() => string | Promise<string>} [options.getToken] called for a token at start
   *   when none is given, and again when the server ends the session
   * @param {{epoch: string, offset: number}} [options.position] where to resume from
   * @param {typeof WebSocket} [options.WebSocket] the implementation (default: the global)
   * @param {{initial?: number, max?: number, factor?: number}} [options.backoff]
   */
  constructor(options) {
    if (!options || !options.url) throw new TypeError("OndokiClient needs {url}");
    if (!options.token && !options.getToken) {
      throw new TypeError("OndokiClient needs {token} or {getToken}");
    }
    this.url = socketUrl(options.url);
    this._token = options.token ?? null;
    this._getToken = options.getToken ?? null;
    this._position = options.position ? { ...options.position } : null;
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (!this._WebSocket) {
      throw new TypeError("no WebSocket here: pass {WebSocket} (in Node, the `ws` package)");
    }
    this._backoff = { ...DEFAULT_BACKOFF, ...(options.backoff ?? {}) };
    this._listeners = { notification: [], resync: [], state: [], error: [] };
    this._socket = null;
    this._timer = null;
    this._attempt = 0;
    this._running = false;
    this._state = "stopped";
  }

  /** The last position processed, `{epoch, offset}`, or null before any: persist it and
   * pass it back as `position` to resume where this client stopped. */
  get position() {
    return this._position ? { ...this._position } : null;
  }

  /** `stopped`, `connecting`, `open` or `waiting` (to reconnect). */
  get state() {
    return this._state;
  }

  /** Call `callback` for each `notification`, `resync`, `state` or `error` event; returns
   * a function that removes it. */
  on(event, callback) {
    const list = this._listeners[event];
    if (!list) throw new TypeError(`unknown event ${event}`);
    list.push(callback);
    return () => {
      const at = list.indexOf(callback);
      if (at >= 0) list.splice(at, 1);
    };
  }

  /** Connect, and keep connected until `stop()` or an ending the client cannot recover. */
  start() {
    if (this._running) return;
    this._running = true;
    this._attempt = 0;
    void this._connect();
  }

  /** Close the socket and stop reconnecting. */
  stop() {
    this._running = false;
    clearTimeout(this._timer);
    this._timer = null;
    const socket = this._socket;
    this._socket = null;
    if (socket) socket.close(CloseCode.NORMAL, "client stopped");
    this._setState("stopped");
  }

  _emit(event, value) {
    for (const callback of [...this._listeners[event]]) {
      try {
        callback(value);
      } catch (error) {
        // A listener's bug must not break the connection; report it unless it came from
        // an error listener itself.
        if (event !== "error") this._emit("error", { code: "listener", message: String(error) });
      }
    }
  }

  _setState(state, detail = {}) {
    this._state = state;
    this._emit("state", { state, ...detail });
  }

  async _connect() {
    if (!this._running) return;
    this._setState("connecting", { attempt: this._attempt });
    if (this._token === null) {
      try {
        this._token = await this._getToken();
      } catch (error) {
        this._emit("error", { code: "token", message: `getToken failed: ${error}` });
        this._retry({});
        return;
      }
      if (!this._running) return;
    }
    let socket;
    try {
      socket = new this._WebSocket(this.url, [SUBPROTOCOL, `bearer.${this._token}`]);
    } catch (error) {
      this._emit("error", { code: "connect", message: String(error) });
      this._retry({});
      return;
    }
    this._socket = socket;
    let openedAt = null;
    socket.onopen = () => {
      if (this._socket !== socket) return;
      openedAt = Date.now();
      if (this._position) {
        // First, within the server's resume window: only what came after our position.
        socket.send(JSON.stringify({ type: "resume", ...this._position }));
      }
      this._setState("open");
    };
    socket.onmessage = (event) => {
      if (this._socket === socket) this._receive(socket, event.data);
    };
    socket.onerror = () => {
      // Always followed by a close event, which decides what happens next.
    };
    socket.onclose = (event) => {
      if (this._socket !== socket) return;
      this._socket = null;
      if (openedAt !== null && Date.now() - openedAt >= STABLE_MS) this._attempt = 0;
      this._closed(event.code, event.reason ?? "");
    };
  }

  _receive(socket, data) {
    let message;
    try {
      message = JSON.parse(typeof data === "string" ? data : String(data));
    } catch {
      this._emit("error", { code: "bad_frame", message: "the server sent a frame that is not JSON" });
      return;
    }
    switch (message.type) {
      case "ping":
        socket.send('{"type":"pong"}');
        break;
      case "notification": {
        const last = this._position;
        if (last && last.epoch === message.epoch && message.offset <= last.offset) {
          break; // already processed: never deliver twice
        }
        this._position = { epoch: message.epoch, offset: message.offset };
        this._emit("notification", {
          type: message.event?.type,
          data: message.event?.data,
          epoch: message.epoch,
          offset: message.offset,
        });
        break;
      }
      case "resync":
        this._position = { epoch: message.epoch, offset: message.offset };
        this._emit("resync", { epoch: message.epoch, offset: message.offset });
        break;
      case "error":
        this._emit("error", { code: message.code, message: message.message });
        break;
      default:
        break; // newer servers may send more: ignore what this client does not know
    }
  }

  _closed(code, reason) {
    if (!this._running) {
      this._setState("stopped", { code, reason });
      return;
    }
    if (AUTH_CODES.has(code)) {
      this._token = null;
      if (!this._getToken) {
        this._running = false;
        this._emit("error", { code: "session_ended", message: reason || `closed with ${code}`, closeCode: code });
        this._setState("stopped", { code, reason });
        return;
      }
    }
    if (code === CloseCode.TOO_MANY_SOCKETS) {
      // Another tab or device may close one: say so, and keep trying at the backoff's pace.
      this._emit("error", { code: "too_many_sockets", message: reason || `closed with ${code}`, closeCode: code });
    }
    this._retry({ code, reason });
  }

  _retry(detail) {
    if (!this._running) return;
    const delay = backoffDelay(this._attempt, this._backoff);
    this._attempt += 1;
    this._setState("waiting", { ...detail, delay });
    this._timer = setTimeout(() => {
      this._timer = null;
      void this._connect();
    }, delay);
  }
}
