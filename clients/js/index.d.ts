// Types of ondoki's notification client (index.js).

/** Where a notification sits in the user's history; pass it back to resume after it. */
export interface Position {
  epoch: string;
  offset: number;
}

export interface Notification<T = unknown> extends Position {
  /** The event type given when it was published, e.g. `job.progress`. */
  type: string;
  data: T;
}

/** History could not cover a gap: refetch your state; the stream goes on from here. */
export type Resync = Position;

export type ClientState = "stopped" | "connecting" | "open" | "waiting";

export interface StateChange {
  state: ClientState;
  /** The close code that led here, if any. */
  code?: number;
  reason?: string;
  /** Milliseconds until the next attempt (state `waiting`). */
  delay?: number;
  /** The attempt being made (state `connecting`), 0 for the first. */
  attempt?: number;
}

export interface ClientError {
  /** `session_ended` (stopped: no getToken), `token` (getToken threw), `connect`,
   * `bad_frame`, `listener`, or a code the server sent (e.g. `bad_message`). */
  code: string;
  message: string;
  closeCode?: number;
}

export interface Backoff {
  /** First bound, in milliseconds (default 250). */
  initial: number;
  /** Largest bound (default 30000). */
  max: number;
  /** Growth per attempt (default 2). */
  factor: number;
}

/** The parts of a WebSocket constructor the client uses (the browser's, or `ws`'s). */
export interface WebSocketConstructor {
  new (url: string, protocols: string[]): WebSocketLike;
}

export interface WebSocketLike {
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export interface ClientOptions {
  /** The service (`https://host`) or its socket (`wss://host/ws`). */
  url: string;
  /** A session token. */
  token?: string;
  /** Called for a token at start when none is given, and when the session ends. */
  getToken?: () => string | Promise<string>;
  /** Where to resume from (a `position` the app saved). */
  position?: Position;
  /** The WebSocket implementation; default: the global one. */
  WebSocket?: WebSocketConstructor;
  backoff?: Partial<Backoff>;
}

export interface Events {
  notification: Notification;
  resync: Resync;
  state: StateChange;
  error: ClientError;
}

export declare const SUBPROTOCOL: "ondoki.v1";

export declare const CloseCode: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  ABNORMAL: 1006;
  NOT_UTF8: 1007;
  POLICY: 1008;
  TOO_BIG: 1009;
  INTERNAL: 1011;
  RESTART: 1012;
  PING_TIMEOUT: 4000;
  SESSION_ENDED: 4001;
  INVALID_TOKEN: 4003;
  TOO_SLOW: 4008;
  TOO_MANY_SOCKETS: 4029;
}>;

export declare const DEFAULT_BACKOFF: Readonly<Backoff>;

export declare function backoffDelay(
  attempt: number,
  backoff?: Backoff,
  random?: () => number,
): number;

export declare function socketUrl(url: string): string;

export declare class OndokiClient {
  constructor(options: ClientOptions);
  readonly url: string;
  /** The last position processed, or null before any. */
  readonly position: Position | null;
  readonly state: ClientState;
  /** Returns a function that removes the listener. */
  on<K extends keyof Events>(event: K, callback: (value: Events[K]) => void): () => void;
  start(): void;
  stop(): void;
}
