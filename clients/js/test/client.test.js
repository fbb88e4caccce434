// The client against a real `ondoki serve` (started by tests/e2e/test_js_client.py, which
// passes ONDOKI_URL and ONDOKI_API_KEY), plus its pure helpers.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import WebSocket from "ws";

import { backoffDelay, CloseCode, OndokiClient, socketUrl } from "../index.js";

const URL_ = process.env.ONDOKI_URL;
const KEY = process.env.ONDOKI_API_KEY;

async function call(path, { method = "GET", token = KEY, body } = {}) {
  const response = await fetch(`${URL_}${path}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

async function login(user) {
  const created = await call("/internal/sessions", { method: "POST", body: { user_id: user } });
  assert.equal(created.status, 201);
  return created.body.token;
}

async function publish(user, n) {
  const sent = await call("/internal/notifications", {
    method: "POST",
    body: { user_id: user, type: "test", data: { n } },
  });
  assert.equal(sent.status, 202);
  return sent.body;
}

// Resolves when `predicate()` holds; fails after `ms`.
async function until(predicate, ms = 10000, what = "condition") {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function collect(client) {
  const seen = { notifications: [], states: [], errors: [], resyncs: [] };
  client.on("notification", (n) => seen.notifications.push(n));
  client.on("state", (s) => seen.states.push(s));
  client.on("error", (e) => seen.errors.push(e));
  client.on("resync", (r) => seen.resyncs.push(r));
  return seen;
}

let users = 0;
const user = () => `js-${process.pid}-${users++}`;

describe("helpers", () => {
  it("backs off exponentially, capped, with full jitter", () => {
    const top = () => 0.999999;
    const bounds = [0, 1, 2, 3, 10, 20].map((n) => backoffDelay(n, { initial: 100, max: 5000, factor: 2 }, top));
    assert.deepEqual(bounds, [99, 199, 399, 799, 4999, 4999]);
    assert.equal(backoffDelay(3, { initial: 100, max: 5000, factor: 2 }, () => 0), 0);
    const spread = new Set(Array.from({ length: 50 }, () => backoffDelay(4)));
    assert.ok(spread.size > 10, "delays are jittered");
  });

  it("finds the socket URL", () => {
    assert.equal(socketUrl("http://h:8000"), "ws://h:8000/ws");
    assert.equal(socketUrl("https://h/api/"), "wss://h/api/ws");
    assert.equal(socketUrl("wss://h/ws"), "wss://h/ws");
  });

  it("names the close codes in one place", () => {
    assert.equal(CloseCode.SESSION_ENDED, 4001);
    assert.equal(CloseCode.INVALID_TOKEN, 4003);
    assert.equal(CloseCode.RESTART, 1012);
    assert.ok(Object.isFrozen(CloseCode));
  });
});

describe("against ondoki serve", () => {
  it("delivers notifications in order and answers pings", async () => {
    const alice = user();
    const client = new OndokiClient({ url: URL_, token: await login(alice), WebSocket });
    const seen = collect(client);
    client.start();
    await until(() => client.state === "open", 10000, "open");
    await new Promise((resolve) => setTimeout(resolve, 700)); // past the resume window
    for (let n = 0; n < 5; n++) await publish(alice, n);
    await until(() => seen.notifications.length === 5, 10000, "5 notifications");
    assert.deepEqual(seen.notifications.map((x) => x.data.n), [0, 1, 2, 3, 4]);
    assert.equal(seen.notifications[0].type, "test");
    const last = seen.notifications[4];
    assert.deepEqual(client.position, { epoch: last.epoch, offset: last.offset });
    // The server pings every 0.3 s and closes after 1 s without a pong: staying open for
    // several intervals means the client answered.
    await new Promise((resolve) => setTimeout(resolve, 2500));
    assert.equal(client.state, "open");
    assert.equal(seen.states.filter((s) => s.state === "waiting").length, 0, JSON.stringify(seen.states));
    client.stop();
    assert.equal(client.state, "stopped");
  });

  it("resumes from a position passed back", async () => {
    const bob = user();
    const token = await login(bob);
    const first = new OndokiClient({ url: URL_, token, WebSocket });
    const seenFirst = collect(first);
    first.start();
    await until(() => first.state === "open");
    await new Promise((resolve) => setTimeout(resolve, 700));
    await publish(bob, 0);
    await until(() => seenFirst.notifications.length === 1);
    const saved = first.position;
    first.stop();
    for (let n = 1; n < 4; n++) await publish(bob, n);

    const second = new OndokiClient({ url: URL_, token, WebSocket, position: saved });
    const seen = collect(second);
    second.start();
    await until(() => seen.notifications.length === 3, 10000, "the missed three");
    assert.deepEqual(seen.notifications.map((x) => x.data.n), [1, 2, 3]);
    second.stop();
  });

  it("stops when the session ends and no getToken is given", async () => {
    const carol = user();
    const token = await login(carol);
    const client = new OndokiClient({ url: URL_, token, WebSocket });
    const seen = collect(client);
    client.start();
    await until(() => client.state === "open");
    assert.equal((await call("/sessions/me", { method: "DELETE", token })).status, 204);
    await until(() => client.state === "stopped", 10000, "stopped");
    const ended = seen.errors.find((e) => e.code === "session_ended");
    assert.ok(ended, JSON.stringify(seen.errors));
    assert.equal(ended.closeCode, CloseCode.SESSION_ENDED);
  });

  it("asks getToken for a new token when the session ends, and resumes", async () => {
    const dave = user();
    let tokens = 0;
    let current = null;
    const client = new OndokiClient({
      url: URL_,
      WebSocket,
      backoff: { initial: 50 },
      getToken: async () => {
        tokens += 1;
        current = await login(dave);
        return current;
      },
    });
    const seen = collect(client);
    client.start();
    await until(() => client.state === "open");
    await new Promise((resolve) => setTimeout(resolve, 700));
    await publish(dave, 0);
    await until(() => seen.notifications.length === 1);
    // End the client's session (logout elsewhere): its socket closes with 4001.
    assert.equal((await call("/sessions/me", { method: "DELETE", token: current })).status, 204);
    await until(() => tokens === 2 && client.state === "open", 10000, "a second token");
    for (let n = 1; n < 3; n++) await publish(dave, n);
    await until(() => seen.notifications.length === 3);
    assert.deepEqual(seen.notifications.map((x) => x.data.n), [0, 1, 2]);
    client.stop();
  });

  it("keeps reconnecting with backoff when the server cannot be reached", async () => {
    const client = new OndokiClient({
      url: "http://127.0.0.1:9", // discard port: nothing listens
      token: "nothing",
      WebSocket,
      backoff: { initial: 20, max: 100 },
    });
    const seen = collect(client);
    client.start();
    await until(() => seen.states.filter((s) => s.state === "waiting").length >= 4, 10000, "retries");
    client.stop();
    const delays = seen.states.filter((s) => s.state === "waiting").map((s) => s.delay);
    assert.ok(delays.every((d) => d >= 0 && d < 100), JSON.stringify(delays));
    assert.equal(client.state, "stopped");
  });
});
