// A connect storm from a lean load generator: Socket.IO v4 over a raw websocket (Node's `net`),
// so the server, not the client, is what a storm measures (bench/socket_bench.py --storm-client wire).
//   node storm_wire.js '{"url","origin","secret","chat","connections","chatSize"?,"first"?,"startAt"?,"hold"?}'
// Each client does what socket.io-client does on the wire, no less: the HTTP upgrade, the
// Engine.IO open, CONNECT with {token} (a fresh HS256 JWT), chat:join with an ack, answering
// pings, and it reads every frame the server sends (events it does not wait for are counted,
// not decoded). Tokens and upgrade requests are made before the storm starts: a storm of real
// devices pays for them on the devices. Prints one JSON line, as socket_fanout.js's storm does.
const net = require("net");
const crypto = require("crypto");

const opt = JSON.parse(process.argv[2]);
const url = new URL(opt.url);

function token(sub) {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const unsigned = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, iat: now, exp: now + 3600 })}`;
  return `${unsigned}.${crypto.createHmac("sha256", opt.secret).update(unsigned).digest("base64url")}`;
}

function maskedText(text) {  // a client frame (RFC 6455 §5.3: clients mask)
  const payload = Buffer.from(text);
  const size = payload.length;
  let head;
  if (size < 126) head = Buffer.from([0x81, 0x80 | size]);
  else if (size < 65536) head = Buffer.from([0x81, 0x80 | 126, size >> 8, size & 0xff]);
  else { head = Buffer.alloc(10); head[0] = 0x81; head[1] = 0x80 | 127; head.writeBigUInt64BE(BigInt(size), 2); }
  const mask = crypto.randomBytes(4);
  for (let i = 0; i < size; i++) payload[i] ^= mask[i & 3];
  return Buffer.concat([head, mask, payload]);
}

class Client {
  constructor(i) {
    this.user = `storm${i}`;
    this.chat = `${opt.chat}-${Math.floor(i / (opt.chatSize || 10))}`;
    this.upgrade = Buffer.from(
      `GET ${url.pathname.replace(/\/$/, "")}/socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n` +
      `Host: ${url.host}\r\nOrigin: ${opt.origin}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      `Sec-WebSocket-Key: ${crypto.randomBytes(16).toString("base64")}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
    this.connectFrame = maskedText(`40${JSON.stringify({ token: token(this.user) })}`);
    this.joinFrame = maskedText(`420${JSON.stringify(["chat:join", { chatId: this.chat }])}`);
    this.events = 0;
  }

  run(started) {
    return new Promise((resolve, reject) => {
      const sock = net.connect(Number(url.port), url.hostname);
      this.sock = sock;
      let buffer = Buffer.alloc(0), upgraded = false, state = "open";
      const fail = (why) => { sock.destroy(); reject(new Error(`${this.user}: ${why}`)); };
      sock.setNoDelay(true);
      sock.on("connect", () => sock.write(this.upgrade));
      sock.on("error", (err) => fail(err.message));
      sock.on("close", () => { if (state !== "joined") fail(`closed while ${state}`); });
      const message = (text) => {
        if (text === "2") { sock.write(maskedText("3")); return; }  // Engine.IO ping
        if (state === "open" && text[0] === "0") { state = "connect"; sock.write(this.connectFrame); return; }
        if (state === "connect" && text.startsWith("40")) {
          state = "join"; this.connectedMs = performance.now() - started; sock.write(this.joinFrame); return;
        }
        if (state === "connect" && text.startsWith("44")) { fail(`connect_error ${text.slice(2)}`); return; }
        if (state === "join" && text.startsWith("430")) {
          const reply = JSON.parse(text.slice(3))[0];
          if (!reply || !reply.ok) { fail(`join: ${text.slice(3)}`); return; }
          state = "joined"; resolve(performance.now() - started); return;
        }
        this.events++;  // an event the storm does not wait for (presence:update, say)
      };
      sock.on("data", (chunk) => {
        buffer = buffer.length ? Buffer.concat([buffer, chunk]) : chunk;
        if (!upgraded) {
          const end = buffer.indexOf("\r\n\r\n");
          if (end < 0) return;
          const status = buffer.toString("latin1", 0, 12);
          if (status !== "HTTP/1.1 101") { fail(`upgrade answered ${buffer.toString("latin1", 0, end).split("\r\n")[0]}`); return; }
          upgraded = true;
          buffer = buffer.subarray(end + 4);
        }
        while (buffer.length >= 2 && !sock.destroyed) {
          let size = buffer[1] & 0x7f, at = 2;
          if (size === 126) { if (buffer.length < 4) return; size = buffer.readUInt16BE(2); at = 4; }
          else if (size === 127) { if (buffer.length < 10) return; size = Number(buffer.readBigUInt64BE(2)); at = 10; }
          if (buffer.length < at + size) return;
          const opcode = buffer[0] & 0x0f;
          const payload = buffer.subarray(at, at + size);
          buffer = buffer.subarray(at + size);
          if (opcode === 0x1) message(payload.toString());
          else if (opcode === 0x8) { fail("close frame"); return; }
        }
      });
    });
  }
}

async function main() {
  const first = opt.first || 0;
  const clients = Array.from({ length: opt.connections }, (_, i) => new Client(first + i));
  if (opt.startAt) await new Promise((resolve) => setTimeout(resolve, Math.max(0, opt.startAt - Date.now())));
  const cpuBefore = process.cpuUsage();
  const started = performance.now();
  const times = [], failures = [];
  const runs = clients.map((c) => c.run(started).then((ms) => { times.push(ms); },
    (err) => { failures.push(String(err.message || err)); }));
  const createdMs = performance.now() - started;
  await Promise.all(runs);
  const seconds = (performance.now() - started) / 1000;
  const cpu = process.cpuUsage(cpuBefore);
  const connected = clients.map((c) => c.connectedMs).filter((ms) => ms !== undefined).sort((a, b) => a - b);
  times.sort((a, b) => a - b);
  const pct = (sorted, p) => sorted.length ? Math.round(sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]) : null;
  console.log(JSON.stringify({
    connections: opt.connections, joined: times.length, failures: failures.length, firstFailures: failures.slice(0, 3),
    seconds: +seconds.toFixed(2), handshakesPerSecond: Math.round(times.length / seconds),
    joinedMs: { p50: pct(times, 0.5), p99: pct(times, 0.99), last: pct(times, 1) },
    connectedMs: { first: pct(connected, 0), p50: pct(connected, 0.5), last: pct(connected, 1) },
    createdMs: Math.round(createdMs), stormCpuMs: Math.round((cpu.user + cpu.system) / 1000),
    eventsPerClient: +(clients.reduce((n, c) => n + c.events, 0) / opt.connections).toFixed(2),
  }));
  if (opt.hold) {  // the other storm processes may still connect: close when told (stdin ends)
    process.stdin.resume();
    await new Promise((resolve) => process.stdin.on("end", resolve));
  }
  for (const c of clients) c.sock.destroy();
  process.exit(0);
}

main().catch((err) => { console.log(JSON.stringify({ error: String(err.stack || err) })); process.exit(1); });
