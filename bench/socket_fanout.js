// Socket.IO benchmark client (run by bench/socket_bench.py; uses tests/js's socket.io-client).
//   node socket_fanout.js fanout '{"url","origin","secret","chat","receivers","inflight","duration","ack","senders"}'
//   node socket_fanout.js idle   '{"url","origin","secret","connections"}'
//   node socket_fanout.js storm  '{"url","origin","secret","chat","connections"}'
//   node socket_fanout.js soak   '{"url","origin","secret","chats","members","messages","inflight"}'
// "receiptEvent": true acks message:new by emitting message:delivered (the Node reference's way).
// Prints one JSON line with the results ("ready" first in idle mode, then waits for SIGTERM).
const path = require("path");
const crypto = require("crypto");
const { io } = require(path.join(__dirname, "..", "tests", "js", "node_modules", "socket.io-client"));

const [mode, raw] = process.argv.slice(2);
const opt = JSON.parse(raw);

function token(sub) {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const unsigned = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, iat: now, exp: now + 3600 })}`;
  const sig = crypto.createHmac("sha256", opt.secret).update(unsigned).digest("base64url");
  return `${unsigned}.${sig}`;
}

function connect(user) {
  const socket = io(opt.url, {
    auth: { token: token(user) }, transports: ["websocket"], reconnection: false,
    extraHeaders: { Origin: opt.origin }, timeout: 60000, forceNew: true,
  });
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (err) => reject(new Error(`${user}: ${err.message} ${JSON.stringify(err.data)}`)));
  });
}

const percentile = (sorted, p) => sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : null;

async function fanout() {
  const receivers = [];
  for (let i = 0; i < opt.receivers; i++) receivers.push(await connect(`r${i}`));
  // --senders S: the in-flight sends spread over S sockets of the sender, each joined (the
  // Node reference refuses a send from a socket outside the room); a sender socket gets the
  // other senders' messages, uncounted, on both targets alike.
  const senders = [];
  for (let i = 0; i < (opt.senders || 1); i++) senders.push(await connect("sender"));
  const sender = senders[0];
  for (const s of [...receivers, ...senders]) {
    const reply = await s.timeout(10000).emitWithAck("chat:join", { chatId: opt.chat });
    if (!reply.ok) throw new Error(`join: ${JSON.stringify(reply)}`);
  }
  let measuring = false, sending = true;
  let acked = 0, ackedTotal = 0, deliveries = 0, deliveriesTotal = 0, errors = 0, receipts = 0;
  const latencies = [];
  let duplicates = 0;
  for (const r of receivers) {
    const seen = new Set();
    r.on("message:new", (data, ack) => {
      deliveriesTotal++;
      if (seen.has(data.message.id)) duplicates++;
      seen.add(data.message.id);
      if (measuring) {
        deliveries++;
        latencies.push(performance.now() - Number(data.message.text.slice(2)));
      }
      delivered(r, data, ack);
    });
  }
  sender.on("receipt:delivered", () => { receipts++; });
  let seq = 0;
  const sendOne = () => {
    if (!sending) return;
    const id = `b${process.pid}-${seq++}`;
    senders[seq % senders.length].timeout(30000).emitWithAck("message:send", { chatId: opt.chat, clientMessageId: id, text: `t:${performance.now()}` })
      .then((reply) => { if (reply.ok) { ackedTotal++; if (measuring) acked++; } else errors++; },
            () => { errors++; })
      .then(sendOne);
  };
  for (let i = 0; i < opt.inflight; i++) sendOne();
  await new Promise((r) => setTimeout(r, 2000)); // warm-up
  measuring = true;
  const started = performance.now();
  await new Promise((r) => setTimeout(r, opt.duration * 1000));
  measuring = false;
  const seconds = (performance.now() - started) / 1000;
  sending = false;
  await new Promise((r) => setTimeout(r, 2000)); // let the last ones arrive
  latencies.sort((a, b) => a - b);
  const result = {
    receivers: opt.receivers, inflight: opt.inflight, senders: senders.length, seconds: +seconds.toFixed(2), ack: !!opt.ack,
    messagesPerSecond: Math.round(acked / seconds), deliveriesPerSecond: Math.round(deliveries / seconds),
    latencyMs: { p50: +percentile(latencies, 0.5).toFixed(1), p99: +percentile(latencies, 0.99).toFixed(1),
                 max: +latencies[latencies.length - 1].toFixed(1) },
    acked: ackedTotal, deliveries: deliveriesTotal, expectedDeliveries: ackedTotal * opt.receivers,
    duplicates, errors, receipts,
  };
  console.log(JSON.stringify(result));
  process.exit(0);
}

function delivered(socket, data, ack) {  // a receiving device acknowledges message:new
  if (!opt.ack) return;
  if (opt.receiptEvent) socket.emit("message:delivered", { chatId: data.message.chatId, messageId: data.message.id, senderId: data.senderId });
  else if (typeof ack === "function") ack();
}

// N clients connect at once (authenticated, websocket), each joining a chat of chatSize members
// (a chat app's chats are small; one big room would measure its presence fan-out instead):
// the time until all are joined, the failures, handshakes per second.
async function storm() {
  // several storm processes (--storm-processes) start together at startAt (epoch ms) and
  // number their users and chats from `first`, so together they are one storm
  if (opt.startAt) await new Promise((resolve) => setTimeout(resolve, Math.max(0, opt.startAt - Date.now())));
  const first = opt.first || 0;
  const cpuBefore = process.cpuUsage();
  const started = performance.now();
  const times = [];
  const connected = [];  // when each client's connect came (its join is emitted then)
  const failures = [];
  const sockets = [];
  const created = Array.from({ length: opt.connections }, async (_, i) => {
    try {
      const socket = await connect(`storm${first + i}`);
      connected.push(performance.now() - started);
      sockets.push(socket);
      const reply = await socket.timeout(60000).emitWithAck("chat:join", { chatId: `${opt.chat}-${Math.floor((first + i) / (opt.chatSize || 10))}` });
      if (!reply.ok) throw new Error(`join: ${JSON.stringify(reply)}`);
      times.push(performance.now() - started);
    } catch (err) { failures.push(String(err.message || err)); }
  });
  const createdMs = performance.now() - started;  // the client's own work of opening them all
  await Promise.all(created);
  const seconds = (performance.now() - started) / 1000;
  const cpu = process.cpuUsage(cpuBefore);
  times.sort((a, b) => a - b);
  connected.sort((a, b) => a - b);
  console.log(JSON.stringify({
    connections: opt.connections, joined: times.length, failures: failures.length, firstFailures: failures.slice(0, 3),
    seconds: +seconds.toFixed(2), handshakesPerSecond: Math.round(times.length / seconds),
    joinedMs: { p50: Math.round(percentile(times, 0.5)), p99: Math.round(percentile(times, 0.99)), last: Math.round(times[times.length - 1]) },
    connectedMs: { first: Math.round(connected[0]), p50: Math.round(percentile(connected, 0.5)), last: Math.round(connected[connected.length - 1]) },
    createdMs: Math.round(createdMs), stormCpuMs: Math.round((cpu.user + cpu.system) / 1000),
  }));
  if (opt.hold) {  // the others may still connect: close when told (stdin ends)
    process.stdin.resume();
    await new Promise((resolve) => process.stdin.on("end", resolve));
  }
  for (const s of sockets) s.close();
  process.exit(0);
}

// State per message: chats of M members (all connected and joined, receivers acking), one
// sender per chat, N messages in all; every delivery counted once per (message, receiver).
async function soak() {
  const chats = [];
  for (let c = 0; c < opt.chats; c++) {
    const chat = `${opt.prefix}-c${c}`;
    const members = [];
    for (let m = 0; m < opt.members; m++) members.push(await connect(`${opt.prefix}-u${c}-${m}`));
    for (const s of members) {
      const reply = await s.timeout(20000).emitWithAck("chat:join", { chatId: chat });
      if (!reply.ok) throw new Error(`join: ${JSON.stringify(reply)}`);
    }
    chats.push({ chat, members });
  }
  let deliveries = 0, duplicates = 0, receipts = 0, acked = 0, errors = 0;
  const seen = new Map();
  for (const { members } of chats) {
    members.forEach((s, m) => {
      s.on("message:new", (data, ack) => {
        const key = `${data.message.id}/${m}`;
        if (seen.has(key)) duplicates++; else { seen.set(key, 1); deliveries++; }
        delivered(s, data, ack);
      });
      s.on("receipt:delivered", () => { receipts++; });
    });
  }
  let next = 0;
  const started = performance.now();
  const sendOne = async () => {
    while (next < opt.messages) {
      const n = next++;
      const { chat, members } = chats[n % chats.length];
      try {
        const reply = await members[0].timeout(30000).emitWithAck("message:send", { chatId: chat, clientMessageId: `${opt.prefix}-m${n}`, text: `soak ${n}` });
        if (reply.ok) acked++; else errors++;
      } catch (err) { errors++; }
    }
  };
  await Promise.all(Array.from({ length: opt.inflight }, sendOne));
  const expected = acked * (opt.members - 1);
  const waitUntil = performance.now() + 15000;
  while ((deliveries < expected || (opt.ack && receipts < expected)) && performance.now() < waitUntil) await new Promise((r) => setTimeout(r, 100));
  await new Promise((r) => setTimeout(r, 500)); // a duplicate would arrive by now
  console.log(JSON.stringify({ messages: opt.messages, acked, errors, deliveries, expectedDeliveries: expected, duplicates, receipts,
    seconds: +((performance.now() - started) / 1000).toFixed(2) }));
  for (const { members } of chats) for (const s of members) s.close();
  process.exit(0);
}

async function idle() {
  const sockets = [];
  const batch = 100; // simultaneous connects (the gateway queues Redis work of a burst)
  for (let i = 0; i < opt.connections; i += batch) {
    const group = [];
    for (let j = i; j < Math.min(opt.connections, i + batch); j++) group.push(connect(`idle${j}`));
    sockets.push(...await Promise.all(group));
  }
  console.log(JSON.stringify({ ready: sockets.length }));
  process.on("SIGTERM", () => { for (const s of sockets) s.close(); process.exit(0); });
  setInterval(() => {}, 1 << 30);
}

({ fanout, idle, storm, soak })[mode]().catch((err) => { console.log(JSON.stringify({ error: String(err.stack || err) })); process.exit(1); });
