// Hostile-but-plausible payloads from the official socket.io-client (run by tests/test_robust_*.py).
// Usage: node robust.js <scenario> <json options>; prints one JSON object with what happened.
const { io } = require("socket.io-client");

const [scenario, rawOptions] = process.argv.slice(2);
const options = JSON.parse(rawOptions || "{}");

function connect(token, extra = {}) {
  return io(options.url, {
    auth: token ? { token } : undefined,
    extraHeaders: { Origin: options.origin },
    transports: extra.transports || ["websocket"],
    reconnection: false,
    timeout: 5000,
    ...extra,
  });
}

function once(socket, event, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${ms} ms`)), ms);
    socket.once(event, (...args) => { clearTimeout(timer); resolve(args); });
  });
}

const call = (socket, event, data) => socket.timeout(5000).emitWithAck(event, data);

function nested(depth) {
  let value = {};
  for (let i = 0; i < depth; i += 1) value = [value];
  return value;
}

// One socket (transport as asked) sends what a careless or hostile page could send; every
// refusal must be an ack on a socket that stays open, and only a packet over 1 MB closes it.
async function hostile() {
  const out = { acks: {} };
  const socket = connect(options.token, { transports: options.transports || ["websocket"] });
  const disconnected = new Promise((resolve) => socket.on("disconnect", (reason) => resolve(reason)));
  await once(socket, "connect");
  out.acks.join = await call(socket, "chat:join", { chatId: options.chat });
  // "\ud800" is a lone surrogate: JSON.stringify sends it as the escape \ud800
  out.acks.loneSurrogate = await call(socket, "message:send",
    { chatId: options.chat, clientMessageId: "js-lone", text: "broken \ud800 text" });
  out.acks.loneLow = await call(socket, "reaction:set",
    { chatId: options.chat, messageId: "m1", emoji: "\udc00" });
  out.acks.longText = await call(socket, "message:send",
    { chatId: options.chat, clientMessageId: "js-long", text: "x".repeat(200000) });
  out.acks.deep = await call(socket, "message:send",
    { chatId: options.chat, clientMessageId: "js-deep", text: "deep", extra: nested(3000) });
  out.acks.valid = await call(socket, "message:send",
    { chatId: options.chat, clientMessageId: "js-ok", text: "still here" });
  out.connectedAfterRefusals = socket.connected;
  if (options.oversize) {
    socket.emit("message:send", { chatId: options.chat, clientMessageId: "js-huge", text: "y".repeat(1100000) });
    out.oversizeReason = await Promise.race([
      disconnected, new Promise((resolve) => setTimeout(() => resolve("still connected"), 5000))]);
  }
  socket.disconnect();
  return out;
}

const scenarios = { hostile };
scenarios[scenario]()
  .then((result) => { console.log(JSON.stringify(result)); process.exit(0); })
  .catch((err) => { console.log(JSON.stringify({ error: String(err && err.stack || err) })); process.exit(1); });
