// A chat client in Node.js with the official socket.io-client, against the devstack or any gateway.
//
//   cd examples/node && npm ci
//   node chat_client.js --user bob                       # listen
//   node chat_client.js --user alice --send "hi there"   # type, send, listen
//
// It logs in over HTTP, connects the socket with the token, joins a chat (the
// first group chat of the user unless --chat), acknowledges every message:new
// (which is what makes the sender's receipt:delivered), optionally types and
// sends, then prints every event that arrives, one line each: `EVENT JSON`.
const { io } = require("socket.io-client");
const { parseArgs } = require("node:util");
const { randomUUID } = require("node:crypto");

const { values: args } = parseArgs({
  options: {
    url: { type: "string", default: "http://127.0.0.1:3000" },
    user: { type: "string", default: "alice" },
    password: { type: "string", default: "devstack" },
    chat: { type: "string" },
    send: { type: "string" },
    listen: { type: "string", default: "10" },
    until: { type: "string" },
  },
});

const show = (kind, data) => console.log(`${kind} ${JSON.stringify(data === undefined ? null : data)}`);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function http(method, path, body, token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(args.url + path, { method, headers, body: body && JSON.stringify(body) });
  const data = await response.json();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${JSON.stringify(data)}`);
  return data;
}

async function main() {
  const session = await http("POST", "/api/auth/login", { username: args.user, password: args.password });
  const token = session.accessToken;
  let chat = args.chat;
  if (!chat) {
    const { chats } = await http("GET", "/api/chats", undefined, token);
    const group = chats.find((c) => c.type === "group");
    if (!group) throw new Error("no group chat: pass --chat");
    chat = group.id;
  }
  const socket = io(args.url, { auth: { token }, transports: ["websocket"], reconnection: false });
  let finish;
  const done = new Promise((resolve) => { finish = resolve; });
  socket.onAny((event, data, ack) => {
    show(event, data);
    // Acknowledging message:new is what makes the sender's receipt:delivered.
    if (typeof ack === "function") ack();
    if (event === args.until) finish();
  });
  socket.on("connect_error", (err) => { console.error(`connect_error ${err.message} ${JSON.stringify(err.data)}`); process.exit(1); });
  await new Promise((resolve) => socket.once("connect", resolve));
  const call = (event, data) => socket.timeout(10000).emitWithAck(event, data);
  const joined = await call("chat:join", { chatId: chat });
  if (!joined.ok) throw new Error(`chat:join refused: ${JSON.stringify(joined)}`);
  show("ready", { userId: session.user.id, username: session.user.username, chatId: chat });
  if (args.send) {
    show("ack typing:start", await call("typing:start", { chatId: chat }));
    await sleep(300);
    show("ack message:send", await call("message:send", { chatId: chat, clientMessageId: randomUUID(), text: args.send }));
    show("ack typing:stop", await call("typing:stop", { chatId: chat }));
  }
  await Promise.race([done, new Promise((resolve) => setTimeout(resolve, Number(args.listen) * 1000).unref())]);
  socket.disconnect();
}

main().catch((err) => { console.error(String(err && err.stack || err)); process.exit(1); });
