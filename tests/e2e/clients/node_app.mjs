// Perform ONE call to api.openai.com the way an unmodified Node app would, and print ONE JSON line.
//
// Usage: node node_app.mjs MODE '{"headers": {...}, "body": {...}}'
// Modes: sdk (the official `openai` npm package, chat.completions.create, maxRetries 0),
//        fetch (Node's built-in fetch), https (node:https with its global agent),
//        https_agent (node:https with an agent of the app's own, keep-alive).
// The `openai` package is loaded from $POUCH_TEST_NODE_MODULES (where the test installed it).
// Configured purely by the environment (HTTPS_PROXY, NODE_OPTIONS, NODE_EXTRA_CA_CERTS,
// OPENAI_API_KEY), as `pouch run` / `pouch env` leave it. Exit code 0 even on errors.
import { createRequire } from 'node:module';
import https from 'node:https';

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
  } else if (mode === 'https' || mode === 'https_agent') {
    const agent = mode === 'https_agent' ? new https.Agent({ keepAlive: true }) : undefined;
    const r = await httpsPost(agent);
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
