// Perform ONE call to api.openai.com the way an unmodified Node app would, and print ONE JSON line.
//
// Usage: node node_app.mjs MODE '{"headers": {...}, "body": {...}}'
// Modes: sdk (the official `openai` npm package, chat.completions.create, maxRetries 0),
//        fetch (Node's built-in fetch), https (node:https with its global agent),
//        https_agent (node:https with an agent of the app's own, keep-alive),
//        http2 (node:http2's connect), tls (a bare tls.connect writing HTTP/1.1 itself).
// The `openai` package is loaded from $POUCH_TEST_NODE_MODULES (where the test installed it).
// Configured purely by the environment (HTTPS_PROXY, NODE_OPTIONS, NODE_EXTRA_CA_CERTS,
// OPENAI_API_KEY), as `pouch run` / `pouch env` leave it. Exit code 0 even on errors.
import { createRequire } from 'node:module';
import https from 'node:https';
import http2 from 'node:http2';
import tls from 'node:tls';

const URL_ = 'https://api.openai.com/v1/chat/completions';
const [mode, argsJson] = process.argv.slice(2);
const args = JSON.parse(argsJson || '{}');
const headers = args.headers || {};
const body = { model: 'gpt-4o-mini', max_tokens: 5, messages: [{ role: 'user', content: 'hi' }], ...(args.body || {}) };
const auth = { authorization: `Bearer ${process.env.OPENAI_API_KEY}`, 'content-type': 'application/json' };
const out = { mode, ok: false, status: null, content: null, error: null };

function httpsPost(agent) {
  return new Promise((resolve, reject) => {
    const req = https.request(URL_, { method: 'POST', headers: { ...auth, ...headers }, agent }, (res) => {
      let data = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { data += c; });
      res.on('end', () => resolve({ status: res.statusCode, body: JSON.parse(data) }));
    });
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

function http2Post() {
  return new Promise((resolve, reject) => {
    const session = http2.connect('https://api.openai.com');
    session.on('error', reject);
    const req = session.request({ ':method': 'POST', ':path': '/v1/chat/completions', ...auth, ...headers });
    let data = '';
    let status = null;
    req.setEncoding('utf8');
    req.on('response', (h) => { status = h[':status']; });
    req.on('data', (c) => { data += c; });
    req.on('end', () => {
      session.close();
      try { resolve({ status, body: JSON.parse(data) }); } catch (e) { reject(new Error(`status ${status}: ${data}`)); }
    });
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

function tlsPost() {
  return new Promise((resolve, reject) => {
    const payload = JSON.stringify(body);
    const lines = ['POST /v1/chat/completions HTTP/1.1', 'Host: api.openai.com', 'Connection: close',
                   `Content-Length: ${Buffer.byteLength(payload)}`,
                   ...Object.entries({ ...auth, ...headers }).map(([k, v]) => `${k}: ${v}`)];
    const s = tls.connect(443, 'api.openai.com', { ALPNProtocols: ['http/1.1'] }, () => {
      s.write(`${lines.join('\r\n')}\r\n\r\n${payload}`);
    });
    let data = '';
    s.setEncoding('utf8');
    s.on('data', (c) => { data += c; });
    s.on('end', () => {
      const [head, ...rest] = data.split('\r\n\r\n');
      const status = Number(head.split(' ')[1]);
      let text = rest.join('\r\n\r\n');
      if (/transfer-encoding: chunked/i.test(head)) {  // one or more chunks, then 0
        let out = '';
        for (let at = 0; ;) {
          const nl = text.indexOf('\r\n', at);
          const n = parseInt(text.slice(at, nl), 16);
          if (!n) break;
          out += text.slice(nl + 2, nl + 2 + n);
          at = nl + 2 + n + 2;
        }
        text = out;
      }
      resolve({ status, body: JSON.parse(text) });
    });
    s.on('error', reject);
  });
}

try {
  if (mode === 'sdk') {
    const require = createRequire(`${process.env.POUCH_TEST_NODE_MODULES}/`);
    const { OpenAI } = require('openai');
    const client = new OpenAI({ maxRetries: 0 });
    const r = await client.chat.completions.create(body, { headers });
    Object.assign(out, { ok: true, status: 200, content: r.choices[0].message.content });
  } else if (mode === 'fetch') {
    const r = await fetch(URL_, { method: 'POST', headers: { ...auth, ...headers }, body: JSON.stringify(body) });
    const j = await r.json();
    Object.assign(out, { ok: r.ok, status: r.status, content: r.ok ? j.choices[0].message.content : null,
                         error: r.ok ? null : j.error });
  } else if (['https', 'https_agent', 'http2', 'tls'].includes(mode)) {
    const agent = mode === 'https_agent' ? new https.Agent({ keepAlive: true }) : undefined;
    const r = mode === 'http2' ? await http2Post() : mode === 'tls' ? await tlsPost() : await httpsPost(agent);
    agent?.destroy();
    const ok = r.status === 200;
    Object.assign(out, { ok, status: r.status, content: ok ? r.body.choices[0].message.content : null,
                         error: ok ? null : r.body.error });
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
} catch (e) {
  out.status = e.status ?? null;
  out.error = { name: e.constructor.name, message: String(e.message), code: e.code ?? e.error?.code ?? null,
                cause: e.cause ? String(e.cause.code || e.cause.message) : null };
}
console.log(JSON.stringify(out));
