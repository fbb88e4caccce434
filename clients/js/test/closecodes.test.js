// How the client follows each close code, with a scripted WebSocket (no server needed).
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { CloseCode, OndokiClient, SUBPROTOCOL } from "../index.js";

// Every socket the client opens, scripted by the test.
function fakeSockets() {
  const opened = [];
  class FakeSocket {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.sent = [];
      this.closedWith = null;
      opened.push(this);
      setTimeout(() => this.onopen?.({}), 0);
    }
    send(text) {
      this.sent.push(JSON.parse(text));
    }
    close(code, reason) {
      this.closedWith = { code, reason };
    }
    // Test helpers: a frame from the server, and the server closing.
    serverSends(message) {
      this.onmessage?.({ data: JSON.stringify(message) });
    }
    serverCloses(code, reason = "") {
      this.onclose?.({ code, reason });
    }
  }
  return { FakeSocket, opened };
}

async function until(predicate, what) {
  const deadline = Date.now() + 5000;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

const fast = { initial: 5, max: 20 };

describe("close codes", () => {
  for (const code of [
    CloseCode.INTERNAL,
    CloseCode.RESTART,
    CloseCode.PING_TIMEOUT,
    CloseCode.TOO_SLOW,
    CloseCode.ABNORMAL,
    CloseCode.GOING_AWAY,
  ]) {
    it(`${code}: reconnects with the same token and resumes`, async () => {
      const { FakeSocket, opened } = fakeSockets();
      const client = new OndokiClient({ url: "http://h", token: "tok", WebSocket: FakeSocket, backoff: fast });
      const got = [];
      client.on("notification", (n) => got.push(n.data));
      client.start();
      await until(() => opened.length === 1 && client.state === "open", "open");
      assert.deepEqual(opened[0].protocols, [SUBPROTOCOL, "bearer.tok"]);
      assert.deepEqual(opened[0].sent, [], "nothing to resume from yet");
      opened[0].serverSends({ type: "notification", epoch: "e1", offset: 7, event: { type: "t", data: 1 } });
      opened[0].serverCloses(code, "bye");
      await until(() => opened.length === 2 && client.state === "open", "reconnected");
      assert.deepEqual(opened[1].protocols, [SUBPROTOCOL, "bearer.tok"]);
      assert.deepEqual(opened[1].sent, [{ type: "resume", epoch: "e1", offset: 7 }]);
      // The server repeats what the client had: it is not delivered twice.
      opened[1].serverSends({ type: "notification", epoch: "e1", offset: 7, event: { type: "t", data: 1 } });
      opened[1].serverSends({ type: "notification", epoch: "e1", offset: 9, event: { type: "t", data: 2 } });
      assert.deepEqual(got, [1, 2]);
      client.stop();
      assert.deepEqual(opened[1].closedWith.code, CloseCode.NORMAL);
    });
  }

  it("4029: says too_many_sockets and keeps trying at the backoff's pace", async () => {
    const { FakeSocket, opened } = fakeSockets();
    const client = new OndokiClient({ url: "http://h", token: "tok", WebSocket: FakeSocket, backoff: fast });
    const errors = [];
    client.on("error", (e) => errors.push(e));
    client.start();
    await until(() => client.state === "open", "open");
    opened[0].serverCloses(CloseCode.TOO_MANY_SOCKETS, "too many sockets: at most 64 per user");
    assert.equal(errors[0].code, "too_many_sockets");
    assert.equal(errors[0].closeCode, 4029);
    await until(() => opened.length === 2 && client.state === "open", "reconnected");
    assert.deepEqual(opened[1].protocols, [SUBPROTOCOL, "bearer.tok"]);
    client.stop();
  });

  for (const code of [CloseCode.SESSION_ENDED, CloseCode.INVALID_TOKEN, CloseCode.POLICY]) {
    it(`${code}: stops without getToken`, async () => {
      const { FakeSocket, opened } = fakeSockets();
      const client = new OndokiClient({ url: "http://h", token: "tok", WebSocket: FakeSocket, backoff: fast });
      const errors = [];
      client.on("error", (e) => errors.push(e));
      client.start();
      await until(() => client.state === "open", "open");
      opened[0].serverCloses(code, "session ended");
      assert.equal(client.state, "stopped");
      assert.equal(errors[0].code, "session_ended");
      assert.equal(errors[0].closeCode, code);
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.equal(opened.length, 1, "no reconnection");
    });

    it(`${code}: asks getToken for a new token`, async () => {
      const { FakeSocket, opened } = fakeSockets();
      let n = 0;
      const client = new OndokiClient({
        url: "http://h",
        WebSocket: FakeSocket,
        backoff: fast,
        getToken: async () => `tok-${++n}`,
      });
      client.start();
      await until(() => client.state === "open", "open");
      assert.deepEqual(opened[0].protocols, [SUBPROTOCOL, "bearer.tok-1"]);
      opened[0].serverCloses(code);
      await until(() => opened.length === 2, "reconnected");
      assert.deepEqual(opened[1].protocols, [SUBPROTOCOL, "bearer.tok-2"]);
      client.stop();
    });
  }

  it("answers pings, and takes a resync's position", async () => {
    const { FakeSocket, opened } = fakeSockets();
    const client = new OndokiClient({
      url: "wss://h/ws",
      token: "tok",
      WebSocket: FakeSocket,
      position: { epoch: "old", offset: 3 },
    });
    const resyncs = [];
    client.on("resync", (r) => resyncs.push(r));
    client.start();
    await until(() => client.state === "open", "open");
    assert.equal(opened[0].url, "wss://h/ws");
    assert.deepEqual(opened[0].sent, [{ type: "resume", epoch: "old", offset: 3 }]);
    opened[0].serverSends({ type: "ping" });
    assert.deepEqual(opened[0].sent.at(-1), { type: "pong" });
    opened[0].serverSends({ type: "resync", epoch: "new", offset: 0 });
    assert.deepEqual(resyncs, [{ epoch: "new", offset: 0 }]);
    assert.deepEqual(client.position, { epoch: "new", offset: 0 });
    client.stop();
  });
});
