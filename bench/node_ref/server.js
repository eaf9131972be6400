// The Node.js gateway this project replaces, rebuilt for the benchmarks (bench/README.md):
// Express 4 + helmet + cors + express-rate-limit (Redis store) + jsonwebtoken (KeyObject)
// + http-proxy-middleware (keep-alive agent), socket.io 4 + @socket.io/redis-adapter, one
// JSON access line per request at LOG_LEVEL info. Same environment variables as the gateway.
// It is a yardstick, not a product: only what the benchmarks exercise.
"use strict";
const crypto = require("crypto");
const http = require("http");
const express = require("express");
const helmet = require("helmet");
const cors = require("cors");
const { rateLimit } = require("express-rate-limit");
const { RedisStore } = require("rate-limit-redis");
const Redis = require("ioredis");
const jwt = require("jsonwebtoken");
const { createProxyMiddleware } = require("http-proxy-middleware");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");

const env = process.env;
const LEVELS = { debug: 10, info: 20, warning: 30, warn: 30, error: 40 };
const level = LEVELS[(env.LOG_LEVEL || "info").toLowerCase()] || 20;
const production = (env.NODE_ENV || env.GATEWAY_ENV) === "production";
const origins = (env.ALLOWED_ORIGINS || "http://localhost:5173").split(",").map((s) => s.trim());
const accessKey = crypto.createSecretKey(Buffer.from(env.JWT_ACCESS_SECRET || ""));
if (production && (env.JWT_ACCESS_SECRET || "").length < 32) {
  console.error("NODE_ENV=production: JWT_ACCESS_SECRET too short"); process.exit(2);
}

function log(lvl, message, fields) {
  if (LEVELS[lvl] < level) return;
  process.stdout.write(JSON.stringify({ time: new Date().toISOString(), level: lvl, message, ...fields }) + "\n");
}

const redisUrl = env.REDIS_URL || `redis://${env.REDIS_HOST || "localhost"}:${env.REDIS_PORT || 6379}`;
const redis = new Redis(redisUrl, { password: env.REDIS_PASSWORD || undefined });

function verify(token) {
  const claims = jwt.verify(token, accessKey, { algorithms: ["HS256"] });
  if (claims.type === "refresh" || claims.typ === "refresh") throw new Error("not an access token");
  return { userId: String(claims.sub || claims.userId), claims };
}

const app = express();
app.disable("x-powered-by");
app.set("etag", false);
app.use(helmet());
app.use(cors({ origin: origins, credentials: true }));
app.use((req, res, next) => {  // request id, identity headers stripped, access log
  const incoming = req.headers["x-request-id"];
  req.id = incoming && /^[A-Za-z0-9._:-]{1,128}$/.test(incoming) ? incoming : crypto.randomUUID();
  res.setHeader("X-Request-ID", req.id);
  for (const name of Object.keys(req.headers)) if (name.startsWith("x-user-")) delete req.headers[name];
  const started = process.hrtime.bigint();
  res.on("finish", () => {
    log(res.statusCode >= 500 ? "warning" : "info", `${req.method} ${req.originalUrl.split("?")[0]} ${res.statusCode}`, {
      request_id: req.id, user_id: req.userId, route: req.route_name, status: res.statusCode,
      duration_ms: Number(process.hrtime.bigint() - started) / 1e6,
    });
  });
  next();
});
app.get("/healthz", (req, res) => res.json({ status: "ok" }));
app.get("/readyz", (req, res) => res.status(redis.status === "ready" ? 200 : 503).json({ ready: redis.status === "ready" }));

function jsonError(res, status, code, message, req) {
  res.status(status).json({ error: { code, message, requestId: req.id } });
}
app.use((req, res, next) => {  // authentication: /api/auth/* is public
  const header = req.headers.authorization || "";
  const bearer = header.startsWith("Bearer ") ? header.slice(7) : null;
  if (bearer) {
    try { req.userId = verify(bearer).userId; } catch (err) {
      if (!req.path.startsWith("/api/auth/")) return jsonError(res.set("WWW-Authenticate", "Bearer"), 401, "INVALID_TOKEN", err.message, req);
    }
  } else if (!req.path.startsWith("/api/auth/")) {
    return jsonError(res.set("WWW-Authenticate", "Bearer"), 401, "UNAUTHENTICATED", "missing token", req);
  }
  req.headers["x-request-id"] = req.id;
  if (req.userId) req.headers["x-user-id"] = req.userId;
  next();
});

function limit(spec, prefix) {
  const [count, window] = (spec || "300/60").split("/").map(Number);
  return rateLimit({
    windowMs: window * 1000, limit: count, standardHeaders: "draft-7", legacyHeaders: false,
    keyGenerator: (req) => req.userId ? `u:${req.userId}` : `ip:${req.ip}`,
    store: new RedisStore({ prefix, sendCommand: (...args) => redis.call(...args) }),
    handler: (req, res) => jsonError(res, 429, "RATE_LIMITED", "too many requests", req),
  });
}
if ((env.RATE_LIMIT_ENABLED || "true") !== "false") {
  app.use("/api/auth", limit(env.RATE_LIMIT_AUTH || "10/60", "rl-auth:"));
  app.use("/api", limit(env.RATE_LIMIT_USER || "300/60", "rl:"));
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
const services = ["auth", "users", "chats", "messages", "media", "notifications"];
services.forEach((name, i) => {
  const target = env[`${name.toUpperCase()}_SERVICE_URL`] || `http://localhost:${3001 + i}`;
  app.use(`/api/${name}`, createProxyMiddleware({
    target, agent, changeOrigin: false, xfwd: true, proxyTimeout: Number(env.UPSTREAM_TIMEOUT || 30) * 1000,
    on: {
      // identity and request id ride on req.headers (set below): setting them in proxyReq
      // throws ERR_HTTP_HEADERS_SENT when a client that went away made the request flush early
      error: (err, req, res) => {
        if (!res.headersSent) jsonError(res, err.code === "ETIMEDOUT" ? 504 : 502, "UPSTREAM_UNAVAILABLE", err.message, req);
      },
    },
  }));
});
app.use((req, res) => jsonError(res, 404, "NOT_FOUND", "no route for this path", req));

const server = http.createServer(app);
server.keepAliveTimeout = 75000;

// -- Socket.IO: the handshake of SPEC §5 and the events bench/socket_fanout.js uses --------
const io = new Server(server, { cors: { origin: origins, credentials: true }, serveClient: false });
const pub = new Redis(redisUrl), sub = pub.duplicate();
io.adapter(createAdapter(pub, sub));
const chatsUrl = new URL(env.CHATS_SERVICE_URL || "http://localhost:3003");
const messagesUrl = new URL(env.MESSAGES_SERVICE_URL || "http://localhost:3004");

function upstream(base, method, path, socket, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? null : Buffer.from(JSON.stringify(body));
    const req = http.request({
      host: base.hostname, port: base.port, method, agent,
      path: base.pathname.replace(/\/$/, "") + path, timeout: 30000,
      headers: { "X-User-Id": socket.data.userId, "X-Request-ID": crypto.randomUUID(),
                 Authorization: `Bearer ${socket.data.token}`, ...headers,
                 ...(payload ? { "Content-Type": "application/json", "Content-Length": payload.length } : {}) },
    }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString();
        if (res.statusCode >= 300) return reject(Object.assign(new Error(`upstream ${res.statusCode}`), { code: "UPSTREAM_ERROR" }));
        try { resolve(text ? JSON.parse(text) : {}); } catch (err) { reject(err); }
      });
    });
    req.on("error", (err) => reject(Object.assign(err, { code: "UPSTREAM_UNAVAILABLE" })));
    req.end(payload);
  });
}

io.use((socket, next) => {
  const header = socket.handshake.headers.authorization || "";
  const token = (socket.handshake.auth && socket.handshake.auth.token) || (header.startsWith("Bearer ") ? header.slice(7) : null);
  if (!token) return next(Object.assign(new Error("missing token"), { data: { code: "UNAUTHENTICATED" } }));
  try {
    socket.data.userId = verify(token).userId;
    socket.data.token = token;
  } catch (err) {
    return next(Object.assign(new Error(err.message), { data: { code: err.name === "TokenExpiredError" ? "TOKEN_EXPIRED" : "INVALID_TOKEN" } }));
  }
  next();
});

const ok = (data) => ({ ok: true, data });
const fail = (err) => ({ ok: false, error: { code: err.code && /^[A-Z_]+$/.test(err.code) ? err.code : "INTERNAL", message: err.message } });
const validId = (v) => typeof v === "string" && v.length > 0 && v.length <= 128;

io.on("connection", (socket) => {
  const userId = socket.data.userId;
  socket.join(`user:${userId}`);
  // presence: a counter of the user's sockets in Redis (the handlers below are registered first,
  // synchronously, or events sent right after the connect would find no listener)
  redis.multi().incr(`presence:${userId}`).expire(`presence:${userId}`, Number(env.PRESENCE_TTL || 30) * 4).exec()
    .catch((err) => log("warning", `presence: ${err.message}`, {}));
  socket.on("disconnect", () => {
    redis.decr(`presence:${userId}`).then((n) => n <= 0 && redis.del(`presence:${userId}`)).catch(() => {});
  });

  socket.on("chat:join", async (payload, ack) => {
    try {
      if (!payload || !validId(payload.chatId)) throw Object.assign(new Error("chatId required"), { code: "VALIDATION_FAILED" });
      await upstream(chatsUrl, "GET", `/chats/${encodeURIComponent(payload.chatId)}`, socket);
      socket.join(`chat:${payload.chatId}`);
      ack(ok({ chatId: payload.chatId }));
    } catch (err) { ack(fail(err)); }
  });

  socket.on("message:send", async (payload, ack) => {
    try {
      if (!payload || !validId(payload.chatId) || !validId(payload.clientMessageId)
          || (payload.text !== undefined && (typeof payload.text !== "string" || payload.text.length > 10000))) {
        throw Object.assign(new Error("invalid message"), { code: "VALIDATION_FAILED" });
      }
      const room = `chat:${payload.chatId}`;
      if (!socket.rooms.has(room)) throw Object.assign(new Error("join the chat first"), { code: "FORBIDDEN" });
      const { message } = await upstream(messagesUrl, "POST", "/messages", socket,
        { chatId: payload.chatId, text: payload.text }, { "Idempotency-Key": payload.clientMessageId });
      socket.to(room).emit("message:new", { message, senderId: userId });
      ack(ok({ message }));
    } catch (err) { ack(fail(err)); }
  });

  // delivered receipts: a receiver acks message:new by emitting message:delivered
  socket.on("message:delivered", async (payload) => {
    if (!payload || !validId(payload.messageId) || !validId(payload.senderId)) return;
    const fresh = await redis.set(`receipt:${payload.messageId}:${userId}`, "1", "EX", 86400, "NX");
    if (fresh) io.to(`user:${payload.senderId}`).emit("receipt:delivered", { chatId: payload.chatId, messageId: payload.messageId, userId, at: Date.now() });
  });
});

const port = Number(env.PORT || 3000);
server.listen(port, env.HOST || "0.0.0.0", () => log("info", `node reference listening on ${port}`, {}));
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => { io.close(); server.close(); process.exit(0); });
