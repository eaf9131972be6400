// Socket.IO fan-out benchmark client (run by bench/socket_bench.py; uses tests/js's socket.io-client).
//   node socket_fanout.js fanout '{"url","origin","secret","chat","receivers","inflight","duration","ack"}'
//   node socket_fanout.js idle   '{"url","origin","secret","connections"}'
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
    extraHeaders: { Origin: opt.origin }, timeout: 20000,
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
  const sender = await connect("sender");
  for (const s of [...receivers, sender]) {
    const reply = await s.timeout(10000).emitWithAck("chat:join", { chatId: opt.chat });
    if (!reply.ok) throw new Error(`join: ${JSON.stringify(reply)}`);
  }
  let measuring = false, sending = true;
  let acked = 0, ackedTotal = 0, deliveries = 0, deliveriesTotal = 0, errors = 0, receipts = 0;
  const latencies = [];
  for (const r of receivers) {
    r.on("message:new", (data, ack) => {
      deliveriesTotal++;
      if (measuring) {
        deliveries++;
        latencies.push(performance.now() - Number(data.message.text.slice(2)));
      }
      if (opt.ack && typeof ack === "function") ack();
    });
  }
  sender.on("receipt:delivered", () => { receipts++; });
  let seq = 0;
  const sendOne = () => {
    if (!sending) return;
    const id = `b${process.pid}-${seq++}`;
    sender.timeout(30000).emitWithAck("message:send", { chatId: opt.chat, clientMessageId: id, text: `t:${performance.now()}` })
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
    receivers: opt.receivers, inflight: opt.inflight, seconds: +seconds.toFixed(2), ack: !!opt.ack,
    messagesPerSecond: Math.round(acked / seconds), deliveriesPerSecond: Math.round(deliveries / seconds),
    latencyMs: { p50: +percentile(latencies, 0.5).toFixed(1), p99: +percentile(latencies, 0.99).toFixed(1),
                 max: +latencies[latencies.length - 1].toFixed(1) },
    acked: ackedTotal, deliveries: deliveriesTotal, expectedDeliveries: ackedTotal * opt.receivers,
    errors, receipts,
  };
  console.log(JSON.stringify(result));
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

({ fanout, idle })[mode]().catch((err) => { console.log(JSON.stringify({ error: String(err.stack || err) })); process.exit(1); });
