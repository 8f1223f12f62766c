'use strict';
// pouch's Node preload (`NODE_OPTIONS=--require <this file>`, set by `pouch env` / `pouch run`).
//
// Why: Node's built-in fetch (undici) and `https` ignore HTTPS_PROXY, so the official `openai`
// npm SDK would go straight to the provider, unbudgeted and silently. Node 22.21+ and 24.5+
// tunnel both through the proxy themselves when NODE_USE_ENV_PROXY=1 (which pouch also sets);
// there this file does nothing. On older Node it tunnels every https request of fetch and of
// `https.Agent` (the global agent and any agent an app makes), and every `tls.connect` not
// given a socket of its own (so `node:http2` and an app's own TLS client too), through an HTTP
// CONNECT to the proxy in https_proxy / HTTPS_PROXY, with its user:password as Proxy-Authorization (so a
// wallet is charged), and honours NO_PROXY. The CA comes from NODE_EXTRA_CA_CERTS as usual.
// No dependency: undici's Agent class is taken from the global dispatcher Node creates.

const http = require('node:http');
const https = require('node:https');
const net = require('node:net');
const tls = require('node:tls');
const { Duplex } = require('node:stream');

function nodeProxiesItself() {
  const [major, minor] = process.versions.node.split('.').map(Number);
  return major > 24 || (major === 24 && minor >= 5) || (major === 22 && minor >= 21);
}

function readProxy() {
  const raw = process.env.https_proxy || process.env.HTTPS_PROXY;
  if (!raw) return null;
  let url;
  try {
    url = new URL(raw.includes('://') ? raw : `http://${raw}`);
  } catch {
    throw new Error(`pouch: HTTPS_PROXY is not a URL: ${JSON.stringify(raw)}`);
  }
  if (url.protocol !== 'http:') {
    throw new Error(`pouch: the Node preload tunnels only through an http:// proxy, not ${url.protocol}`);
  }
  const headers = {};
  if (url.username || url.password) {
    const cred = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`;
    headers['proxy-authorization'] = `Basic ${Buffer.from(cred).toString('base64')}`;
  }
  return { host: url.hostname.replace(/^\[|\]$/g, ''), port: Number(url.port) || 80, headers };
}

function noProxyRules() {
  const raw = process.env.no_proxy || process.env.NO_PROXY || '';
  return raw.split(/[\s,]+/).filter(Boolean).map((entry) => {
    const m = /^(.*?)(?::(\d+))?$/.exec(entry.toLowerCase());
    return { host: m[1].replace(/^\*?\./, '.').replace(/^\[|\]$/g, ''), port: m[2] ? Number(m[2]) : 0 };
  });
}

function bypass(rules, host, port) {
  host = String(host).toLowerCase().replace(/^\[|\]$/g, '');
  return rules.some((r) => {
    if (r.host === '*') return true;
    if (r.port && r.port !== Number(port)) return false;
    if (r.host.startsWith('.')) return host.endsWith(r.host) || host === r.host.slice(1);
    return host === r.host || host.endsWith(`.${r.host}`);
  });
}

// A raw TCP tunnel to host:port through the proxy; cb(err, socket).
function tunnel(proxy, host, port, cb) {
  const target = net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
  const req = http.request({
    host: proxy.host, port: proxy.port, method: 'CONNECT', path: target, agent: false,
    headers: { host: target, ...proxy.headers },
  });
  let done = false;
  const finish = (err, socket) => { if (!done) { done = true; cb(err, socket); } };
  req.once('connect', (res, socket, head) => {
    if (res.statusCode !== 200) {
      socket.destroy();
      finish(new Error(`pouch: the proxy at ${proxy.host}:${proxy.port} refused CONNECT ${target}: ` +
                       `${res.statusCode} ${res.statusMessage}`));
      return;
    }
    if (head && head.length) socket.unshift(head);
    finish(null, socket);
  });
  req.once('error', (err) => {
    finish(new Error(`pouch: cannot reach the proxy at ${proxy.host}:${proxy.port} (${err.code || err.message}); ` +
                     'is `pouch proxy` running?'));
  });
  req.end();
}

// A socket for a tunnel still being opened: what it is asked to write waits for the tunnel, so a
// TLS client can be handed it at once (tls.connect accepts any Duplex as its `socket`).
class PendingTunnel extends Duplex {
  constructor(proxy, host, port) {
    super();
    this._raw = null;
    this._queued = [];
    this._ended = null;
    tunnel(proxy, host, port, (err, raw) => {
      if (err) { this.destroy(err); return; }
      if (this.destroyed) { raw.destroy(); return; }
      this._raw = raw;
      raw.on('data', (d) => { if (!this.push(d)) raw.pause(); });
      raw.on('end', () => this.push(null));
      raw.on('error', (e) => this.destroy(e));
      raw.on('close', () => { if (!this.destroyed) this.destroy(); });
      for (const [chunk, encoding, cb] of this._queued) raw.write(chunk, encoding, cb);
      this._queued = [];
      if (this._ended) raw.end(this._ended);
    });
  }
  _read() { if (this._raw) this._raw.resume(); }
  _write(chunk, encoding, cb) {
    if (this._raw) this._raw.write(chunk, encoding, cb); else this._queued.push([chunk, encoding, cb]);
  }
  _final(cb) { if (this._raw) this._raw.end(cb); else this._ended = cb; }
  _destroy(err, cb) { if (this._raw) this._raw.destroy(); cb(err); }
  setNoDelay(v) { if (this._raw) this._raw.setNoDelay(v); return this; }
  setKeepAlive(...a) { if (this._raw) this._raw.setKeepAlive(...a); return this; }
  ref() { if (this._raw) this._raw.ref(); return this; }
  unref() { if (this._raw) this._raw.unref(); return this; }
}

// tls.connect(options[, cb]) | (port[, host][, options][, cb]) -> [options, cb]; null for a path (IPC).
function tlsArgs(args) {
  let i = 0;
  let options = {};
  if (args[0] !== null && typeof args[0] === 'object') {
    options = { ...args[0] };
    i = 1;
  } else if (typeof args[0] === 'number' || (typeof args[0] === 'string' && /^\d+$/.test(args[0]))) {
    options.port = Number(args[0]);
    i = 1;
    if (typeof args[i] === 'string') options.host = args[i++];
    if (args[i] !== null && typeof args[i] === 'object') options = { ...args[i++], ...options };
  } else {
    return null;
  }
  return [options, typeof args[i] === 'function' ? args[i] : undefined];
}

function patchTls(proxy, rules) {
  const original = tls.connect;
  tls.connect = function pouchTlsConnect(...args) {
    const parsed = tlsArgs(args);
    if (!parsed) return original.apply(this, args);
    const [options, cb] = parsed;
    const host = String(options.host || 'localhost').replace(/^\[|\]$/g, '');
    const port = Number(options.port) || 443;
    if (options.socket || options.path || bypass(rules, host, port)) return original.apply(this, args);
    const servername = options.servername || (net.isIP(host) ? undefined : host);
    return original.call(this, { ...options, host, port, servername, socket: new PendingTunnel(proxy, host, port) }, cb);
  };
}

function patchHttps(proxy, rules) {
  const original = https.Agent.prototype.createConnection;
  https.Agent.prototype.createConnection = function pouchCreateConnection(options, oncreate) {
    const opts = (options && typeof options === 'object') ? options : {};
    const host = opts.host || opts.hostname || 'localhost';
    const port = opts.port || 443;
    if (opts.socket || typeof oncreate !== 'function' || bypass(rules, host, port)) {
      return original.apply(this, arguments);
    }
    tunnel(proxy, host, port, (err, socket) => {
      if (err) { oncreate(err); return; }
      let tlsSocket;
      try {
        tlsSocket = original.call(this, { ...opts, socket });
      } catch (e) {
        socket.destroy();
        oncreate(e);
        return;
      }
      oncreate(null, tlsSocket);
    });
    return undefined;
  };
}

function patchFetch(proxy, rules) {
  void globalThis.Headers; // loads Node's bundled undici, which installs its global dispatcher
  const key = Symbol.for('undici.globalDispatcher.1');
  const current = globalThis[key];
  if (!current || typeof current.constructor !== 'function') return false;
  const Agent = current.constructor;
  const connect = (opts, cb) => {
    const hostname = String(opts.hostname).replace(/^\[|\]$/g, '');
    const secure = opts.protocol === 'https:';
    const port = Number(opts.port) || (secure ? 443 : 80);
    const servername = opts.servername || (net.isIP(hostname) ? undefined : hostname);
    const onSocket = (err, raw) => {
      if (err) { cb(err); return; }
      if (!secure) { raw.setNoDelay(true); cb(null, raw); return; }
      const s = tls.connect({ socket: raw, host: hostname, servername, ALPNProtocols: ['http/1.1'] });
      s.once('secureConnect', () => { s.removeListener('error', cb); s.setNoDelay(true); cb(null, s); });
      s.once('error', cb);
    };
    // fetch honours the proxy for https only (like pouch's env), and NO_PROXY.
    if (!secure || bypass(rules, hostname, port)) {
      const raw = net.connect({ host: hostname, port });
      raw.once('connect', () => { raw.removeListener('error', onSocket); onSocket(null, raw); });
      raw.once('error', onSocket);
      return;
    }
    tunnel(proxy, hostname, port, onSocket);
  };
  globalThis[key] = new Agent({ connect });
  return true;
}

if (!(nodeProxiesItself() && process.env.NODE_USE_ENV_PROXY === '1')) {
  const proxy = readProxy();
  if (proxy) {
    const rules = noProxyRules();
    patchHttps(proxy, rules);
    patchTls(proxy, rules);
    if (!patchFetch(proxy, rules)) {
      process.emitWarning('pouch: could not route fetch through the proxy (no undici global dispatcher)');
    }
  }
}
