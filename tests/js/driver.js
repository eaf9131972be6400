// Drives the gateway with the official socket.io-client (run by tests/test_realtime_js.py).
// Usage: node driver.js <scenario> <json options>; prints one JSON object with what happened.
const { io } = require("socket.io-client");

const [scenario, rawOptions] = process.argv.slice(2);
const options = JSON.parse(rawOptions || "{}");

function connect(token, extra = {}) {
  return io(extra.url || options.url, {
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
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function mainFlow() {
  const out = { events: { alice: [], bob: [] } };
  const alice = connect(options.alice);
  // polling, then upgrade; on another node when bobUrl is given
  const bob = connect(options.bob, { transports: ["polling", "websocket"], url: options.bobUrl });
  for (const [name, socket] of [["alice", alice], ["bob", bob]]) {
    socket.onAny((event, data) => out.events[name].push([event, data]));
  }
  // bob acknowledges message:new (the ack is what makes a delivered receipt)
  bob.on("message:new", (data, ack) => { if (typeof ack === "function") ack(); });
  await Promise.all([once(alice, "connect"), once(bob, "connect")]);
  out.bobJoin = await call(bob, "chat:join", { chatId: options.chat });
  const presence = once(bob, "presence:update");
  out.aliceJoin = await call(alice, "chat:join", { chatId: options.chat });
  out.presence = (await presence)[0];
  const typing = once(bob, "typing:update");
  out.typingAck = await call(alice, "typing:start", { chatId: options.chat });
  out.typing = (await typing)[0];
  const delivered = once(alice, "receipt:delivered");
  const arrived = once(bob, "message:new");
  out.sendAck = await call(alice, "message:send", { chatId: options.chat, clientMessageId: "js-1", text: "hello from node" });
  out.messageNew = (await arrived)[0];
  out.receipt = (await delivered)[0];
  out.badPayload = await call(alice, "message:send", { chatId: options.chat });
  out.bobTransport = bob.io.engine.transport.name;
  await sleep(200);
  alice.disconnect();
  bob.disconnect();
  return out;
}

async function badToken() {
  const socket = connect(options.token);
  const [err] = await once(socket, "connect_error");
  socket.close();
  return { message: err.message, data: err.data };
}

async function badOrigin() {
  const out = {};
  for (const transports of [["websocket"], ["polling"]]) {
    const socket = connect(options.token, { transports, extraHeaders: { Origin: "http://evil.test" } });
    const [err] = await once(socket, "connect_error");
    out[transports[0]] = { message: err.message, data: err.data };
    socket.close();
  }
  return out;
}

const scenarios = { main: mainFlow, badToken, badOrigin };
scenarios[scenario]()
  .then((result) => { console.log(JSON.stringify(result)); process.exit(0); })
  .catch((err) => { console.log(JSON.stringify({ error: String(err && err.stack || err) })); process.exit(1); });
