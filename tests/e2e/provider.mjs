// A stand-in for Encvoy ID's OpenID Provider: the same engine (npm `oidc-provider` 8.8.1)
// configured like packages/oidc/src/config.ts of encvoy/id. See PROVIDER.md.
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import https from 'node:https';
import { pathToFileURL } from 'node:url';

import Provider, { interactionPolicy } from 'oidc-provider';

const DEBUG = !!process.env.E2E_DEBUG && process.env.E2E_DEBUG !== '0';
const debug = (...args) => { if (DEBUG) console.error('[provider]', ...args); };
const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

const GRANTABLE = ['AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode', 'BackchannelAuthenticationRequest'];
const ACCOUNT_MODELS = ['Session', 'Grant', 'AuthorizationCode', 'AccessToken', 'RefreshToken'];

// Encvoy ID's `sub` is its numeric user id; derive a stable numeric string from the login.
export const subFor = (login) => String(parseInt(createHash('sha256').update(`encvoy:${login}`).digest('hex').slice(0, 12), 16));

// ---------------------------------------------------------------- storage
// One Map per model, shared by every Provider instance built by rotateKeys().
function createStore() {
  const models = new Map();
  const records = (name) => {
    if (!models.has(name)) models.set(name, new Map());
    return models.get(name);
  };
  const live = (r) => r && r.exp > Date.now();
  const deleteWhere = (name, predicate) => {
    let count = 0;
    for (const [id, r] of records(name)) {
      if (!live(r)) records(name).delete(id);
      else if (predicate(r.payload)) { records(name).delete(id); count += 1; }
    }
    return count;
  };

  class MemoryAdapter {
    constructor(name) { this.name = name; this.records = records(name); }

    async upsert(id, payload, expiresIn) {
      const exp = expiresIn ? Date.now() + expiresIn * 1000 : Infinity;
      this.records.set(id, { payload: structuredClone(payload), exp });
    }

    #get(id) {
      const r = this.records.get(id);
      if (r && !live(r)) this.records.delete(id);
      return live(r) ? r : undefined;
    }

    async find(id) { const r = this.#get(id); return r && structuredClone(r.payload); }

    async findByUid(uid) { return this.#findBy('uid', uid); }

    async findByUserCode(userCode) { return this.#findBy('userCode', userCode); }

    async #findBy(field, value) {
      for (const [id, r] of this.records) if (r.payload[field] === value) return this.find(id);
      return undefined;
    }

    async consume(id) { const r = this.#get(id); if (r) r.payload.consumed = Math.floor(Date.now() / 1000); }

    async destroy(id) { this.records.delete(id); }

    async revokeByGrantId(grantId) { // eslint-disable-line class-methods-use-this
      for (const name of GRANTABLE) deleteWhere(name, (p) => p.grantId === grantId);
    }
  }

  return { MemoryAdapter, deleteWhere };
}

// ---------------------------------------------------------------- HTML
const esc = (v) => String(v ?? '').replace(/[&<>"']/g, (c) => ({
  '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
})[c]);

const STYLE = 'body{font-family:sans-serif;background:#f4f5f7;margin:0}main{max-width:340px;margin:60px auto;background:#fff;padding:24px 32px;border-radius:8px;box-shadow:0 1px 4px rgba(0,0,0,.2)}label,input,button{display:block;width:100%;box-sizing:border-box;margin:6px 0}input,button{padding:8px}.error{color:#b00020}';

const page = (title, body) => `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)}</title><style>${STYLE}</style></head>
<body><main>${body}</main></body></html>`;

function loginPage({ action, clientId, login = '', error }) {
  return page('Encvoy ID — Sign in', `
<h1>Encvoy ID</h1>
<p>Sign in to continue to <strong>${esc(clientId)}</strong></p>
${error ? `<p class="error" id="error" role="alert">${esc(error)}</p>` : ''}
<form method="post" action="${esc(action)}" autocomplete="off">
  <label for="login">Login</label>
  <input id="login" name="login" type="text" value="${esc(login)}" required autofocus>
  <label for="password">Password</label>
  <input id="password" name="password" type="password" required>
  <button id="submit" type="submit">Sign in</button>
</form>`);
}

const errorPage = (error, description) => page('Encvoy ID — Error',
  `<h1>Error</h1><p id="error">${esc(error)}</p><p id="error_description">${esc(description)}</p>`);

function sendHtml(res, status, html) {
  res.writeHead(status, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
  res.end(html);
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 64 * 1024) throw new Error('request body too large');
  }
  return new URLSearchParams(body);
}

// ---------------------------------------------------------------- interaction policy
// encvoy/id packages/oidc/src/policies/interaction.policy.ts: every fresh authorization request
// goes through the interaction page (which auto-completes when the session is signed in);
// only the resumed request may skip login. Consequence: prompt=none always fails
// (error=interaction_required), silent re-authentication is a redirect chain, not prompt=none.
function encvoyPolicy() {
  const policy = interactionPolicy.base();
  const login = policy.get('login');
  login.checks.remove('no_session');
  login.checks.add(new interactionPolicy.Check('no_session', 'End-User authentication is required', (ctx) => {
    const { oidc } = ctx;
    if (!oidc?.session) return true;
    const resumed = typeof ctx.params?.uid === 'string' && ctx.params.uid.length > 0;
    return resumed ? !oidc.session.accountId : true;
  }));
  return policy;
}

function newSigningKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const kid = `sig-${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
  return { ...privateKey.export({ format: 'jwk' }), kid, use: 'sig', alg: 'RS256' };
}

// ---------------------------------------------------------------- the provider
export async function startProvider({
  host = '127.0.0.1', port = 0, cert, key, basePath = '/api/oidc',
  clients = [], users = [],
  alwaysInteract = true, // Encvoy ID's interaction policy (see encvoyPolicy); false = oidc-provider's base policy
  ttl = {}, // overrides of the TTLs below, in seconds (e.g. { AccessToken: 5 } to exercise refresh)
} = {}) {
  if (!cert || !key) throw new Error('startProvider: cert and key (PEM) are required');
  basePath = basePath.replace(/\/+$/, ''); // eslint-disable-line no-param-reassign

  const accounts = users.map((u) => ({ ...u, sub: u.sub ?? subFor(u.login) }));
  const accountBySub = new Map(accounts.map((a) => [a.sub, a]));
  const cookieKeys = [randomBytes(32).toString('hex')];
  const pairwiseSalt = randomBytes(16).toString('hex');
  const signingKeys = [newSigningKey()];
  const store = createStore();
  const clientMetadata = clients.map((c) => ({
    grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'], ...c,
  }));

  const permissionsFor = (account, clientId) => {
    const p = account.permissions;
    return Array.isArray(p) ? p : (p?.[clientId] ?? []);
  };

  let issuer;
  let current; // { provider, handler }
  const grants = { refreshTokensIssued: 0 };
  let delay = 0;

  function buildProvider() {
    const provider = new Provider(issuer, {
      adapter: store.MemoryAdapter,
      clients: clientMetadata,
      jwks: { keys: signingKeys },
      cookies: { keys: cookieKeys, long: { path: basePath || '/' } },
      routes: {
        authorization: '/oidc/auth',
        token: '/oidc/token',
        userinfo: '/oidc/me',
        jwks: '/oidc/jwks',
        end_session: '/oidc/session/end',
        introspection: '/oidc/token/introspection',
        revocation: '/oidc/token/revocation',
        code_verification: '/oidc/device',
        device_authorization: '/oidc/device/auth',
        pushed_authorization_request: '/oidc/request',
        registration: '/oidc/reg',
        backchannel_authentication: '/oidc/backchannel',
      },
      scopes: ['openid', 'offline_access', 'email', 'phone', 'profile'],
      claims: {
        openid: ['sub', 'permissions'],
        email: ['email', 'email_verified'],
        phone: ['phone_number', 'phone_number_verified'],
        profile: ['name', 'given_name', 'family_name', 'nickname', 'login', 'picture', 'preferred_username'],
      },
      conformIdTokenClaims: false,
      subjectTypes: ['public', 'pairwise'],
      pairwiseIdentifier: (ctx, accountId, client) => createHash('sha256')
        .update(client.sectorIdentifier).update(accountId).update(pairwiseSalt).digest('hex'),
      responseTypes: ['code token', 'code id_token token', 'code id_token', 'code', 'id_token', 'none'],
      pkce: { required: () => false }, // S256 is supported, not required
      expiresWithSession: async () => true, // as Encvoy ID: tokens die with the provider session
      ttl: {
        AccessToken: 1800, IdToken: 1800, AuthorizationCode: 60, RefreshToken: 86400,
        Session: 86400, Grant: 86400, Interaction: 86400, ...ttl,
      },
      async findAccount(ctx, sub) {
        const account = accountBySub.get(sub);
        if (!account) return undefined;
        return {
          accountId: sub,
          async claims() {
            const { password, permissions, ...rest } = account; // eslint-disable-line no-unused-vars
            return {
              preferred_username: account.login,
              ...rest,
              permissions: permissionsFor(account, ctx?.oidc?.client?.clientId),
            };
          },
        };
      },
      async extraTokenClaims(ctx, token) { // Encvoy ID puts permissions on access tokens too
        const account = accountBySub.get(token.accountId);
        return account ? { permissions: permissionsFor(account, token.clientId) } : undefined;
      },
      clientBasedCORS: () => false,
      interactions: {
        url: (ctx, interaction) => `${basePath}/interaction/${interaction.uid}`,
        ...(alwaysInteract ? { policy: encvoyPolicy() } : {}),
      },
      features: {
        devInteractions: { enabled: false },
        introspection: {
          enabled: true,
          allowedPolicy: async (ctx, client, token) => client.clientId === token.clientId,
        },
        revocation: { enabled: true },
        registration: { enabled: false },
        backchannelLogout: { enabled: false },
        rpInitiatedLogout: {
          enabled: true,
          // Encvoy ID's page: the confirmation form submits itself with logout=yes.
          async logoutSource(ctx, form) {
            ctx.body = `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Encvoy ID — Signing out</title></head>
<body>
  ${form}
  <input type="hidden" form="op.logoutForm" name="logout" value="yes"/>
  <noscript><button type="submit" form="op.logoutForm">Sign out</button></noscript>
  <script>document.getElementById('op.logoutForm').submit()</script>
</body></html>`;
          },
          async postLogoutSuccessSource(ctx) {
            ctx.body = page('Encvoy ID — Signed out', '<h1>Signed out</h1><p id="signed-out">You have been signed out of Encvoy ID.</p>');
          },
        },
      },
      async renderError(ctx, out) {
        ctx.type = 'html';
        ctx.body = errorPage(out.error, out.error_description);
      },
    });

    // Successful token requests by grant type, and refresh tokens issued, for tests.
    provider.on('grant.success', (ctx) => {
      const type = ctx.oidc.params?.grant_type ?? 'unknown';
      grants[type] = (grants[type] ?? 0) + 1;
      if (ctx.body?.refresh_token) grants.refreshTokensIssued += 1;
    });

    if (DEBUG) {
      for (const event of ['server_error', 'authorization.error', 'grant.error', 'end_session.error',
        'introspection.error', 'revocation.error', 'userinfo.error', 'jwks.error', 'discovery.error']) {
        provider.on(event, (ctx, err) => debug(event, err?.error ?? '', err?.error_description ?? err?.message ?? ''));
      }
    }
    return { provider, handler: provider.callback() };
  }

  // ------------------------------------------------------------ interaction pages
  async function interaction(req, res, uid, isLoginPost) {
    const { provider } = current;
    const details = await provider.interactionDetails(req, res);
    if (details.uid !== uid) return sendHtml(res, 400, errorPage('invalid_request', 'interaction session mismatch'));
    const { prompt, params, session } = details;
    const action = `${basePath}/interaction/${uid}/login`;

    if (prompt.name === 'login') {
      if (isLoginPost && req.method === 'POST') {
        const form = await readForm(req);
        const login = form.get('login') ?? '';
        const account = accounts.find((a) => (a.login === login || a.email === login)
          && a.password === (form.get('password') ?? ''));
        if (!account) {
          return sendHtml(res, 401, loginPage({
            action, clientId: params.client_id, login, error: 'Invalid login or password',
          }));
        }
        return provider.interactionFinished(req, res, { login: { accountId: account.sub } }, { mergeWithLastSubmission: false });
      }
      if (isLoginPost || req.method !== 'GET') return sendHtml(res, 405, errorPage('invalid_request', 'method not allowed'));
      // Signed in already and only Encvoy's "always interact" check fired: continue silently.
      if (session?.accountId && prompt.reasons.every((r) => r === 'no_session')) {
        return provider.interactionFinished(req, res, { login: { accountId: session.accountId } }, { mergeWithLastSubmission: false });
      }
      return sendHtml(res, 200, loginPage({ action, clientId: params.client_id }));
    }

    if (prompt.name === 'consent') { // granted automatically, offline_access included when asked
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      const { missingOIDCScope, missingOIDCClaims, missingResourceScopes } = prompt.details;
      if (missingOIDCScope) grant.addOIDCScope(missingOIDCScope.join(' '));
      if (missingOIDCClaims) grant.addOIDCClaims(missingOIDCClaims);
      for (const [indicator, scopes] of Object.entries(missingResourceScopes ?? {})) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
      const grantId = await grant.save();
      const consent = details.grantId ? {} : { grantId };
      return provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
    }
    return sendHtml(res, 400, errorPage('invalid_request', `unsupported prompt ${prompt.name}`));
  }

  // ------------------------------------------------------------ HTTPS server
  async function handle(req, res) {
    if (delay > 0) await sleep(delay);
    const { pathname } = new URL(req.url, 'https://provider.invalid');
    if (basePath && pathname !== basePath && !pathname.startsWith(`${basePath}/`)) {
      return sendHtml(res, 404, errorPage('not_found', 'unknown path'));
    }
    const rest = pathname.slice(basePath.length) || '/';
    const m = /^\/interaction\/([A-Za-z0-9_-]+)(\/login)?$/.exec(rest);
    if (m) {
      try {
        return await interaction(req, res, m[1], !!m[2]);
      } catch (err) {
        debug('interaction error', err);
        if (res.headersSent) return res.end();
        return sendHtml(res, 400, errorPage(err.error ?? 'invalid_request', err.error_description ?? err.message));
      }
    }
    // Mounting as oidc-provider 8 expects: it derives the mount path from originalUrl vs url.
    req.originalUrl = req.url;
    req.url = req.url.slice(basePath.length) || '/';
    return current.handler(req, res);
  }

  const sockets = new Set();
  const server = https.createServer({ cert, key }, (req, res) => {
    if (DEBUG) res.on('finish', () => debug(req.method, req.originalUrl ?? req.url, res.statusCode));
    handle(req, res).catch((err) => {
      debug('unhandled', err);
      if (!res.headersSent) sendHtml(res, 500, errorPage('server_error', 'unexpected error'));
      else res.end();
    });
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.on('tlsClientError', (err) => debug('tls', err.message));

  const listen = () => new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => { server.off('error', reject); resolve(); });
  });

  let closed = false;
  async function stop() {
    if (!server.listening) return;
    const done = new Promise((resolve) => { server.close(() => resolve()); });
    for (const socket of sockets) socket.destroy();
    await done;
  }

  await listen();
  port = server.address().port; // eslint-disable-line no-param-reassign
  issuer = `https://${host}:${port}${basePath}`;
  current = buildProvider();
  debug('issuer', issuer);

  return {
    issuer,
    port,
    async rotateKeys() {
      const fresh = newSigningKey();
      signingKeys.unshift(fresh); // the first RS256 key signs; older ones stay in the JWKS
      current = buildProvider();
      return fresh.kid;
    },
    async endSessions(login) {
      const account = accounts.find((a) => a.login === login);
      if (!account) return 0;
      return ACCOUNT_MODELS.reduce((n, name) => n + store.deleteWhere(name, (p) => p.accountId === account.sub), 0);
    },
    setDelay(ms) { delay = Math.max(0, Number(ms) || 0); },
    // An administrator changes a user's permissions: later tokens and userinfo carry them.
    setPermissions(login, permissions) {
      const account = accounts.find((a) => a.login === login);
      if (!account) throw new Error(`no user ${login}`);
      account.permissions = permissions;
    },
    // Successful token requests so far, by grant_type, and refresh tokens issued.
    grantCounts() { return { ...grants }; },
    stop,
    async start() {
      if (closed) throw new Error('provider was closed');
      if (!server.listening) await listen();
    },
    async close() { closed = true; await stop(); },
  };
}

// ---------------------------------------------------------------- manual use
// node tests/e2e/provider.mjs --cert c.pem --key k.pem [--port 9444] [--gateway https://127.0.0.1:8443]
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const args = Object.fromEntries(process.argv.slice(2).reduce((acc, arg, i, all) => {
    if (arg.startsWith('--')) acc.push([arg.slice(2), all[i + 1]]);
    return acc;
  }, []));
  if (!args.cert || !args.key) {
    console.error('usage: node provider.mjs --cert cert.pem --key key.pem [--port 9444] [--host 127.0.0.1] [--base-path /api/oidc] [--gateway https://127.0.0.1:8443]');
    process.exit(2);
  }
  const gateway = (args.gateway ?? 'https://127.0.0.1:8443').replace(/\/+$/, '');
  const p = await startProvider({
    host: args.host ?? '127.0.0.1',
    port: Number(args.port ?? 0),
    basePath: args['base-path'] ?? '/api/oidc',
    cert: readFileSync(args.cert, 'utf8'),
    key: readFileSync(args.key, 'utf8'),
    clients: [{
      client_id: 'ssogate', client_secret: 'ssogate-secret',
      redirect_uris: [`${gateway}/oauth2/callback`], post_logout_redirect_uris: [`${gateway}/`],
    }],
    users: [{
      login: 'demo', password: 'demo', email: 'demo@example.com', email_verified: true,
      name: 'Demo User', permissions: ['sentry:member'],
    }],
  });
  console.log(`issuer: ${p.issuer}`);
  console.log(`discovery: ${p.issuer}/.well-known/openid-configuration`);
  console.log(`client: ssogate / ssogate-secret (redirect ${gateway}/oauth2/callback); user: demo / demo`);
  const shutdown = () => { p.close().then(() => process.exit(0)); };
  process.on('SIGINT', shutdown);
  process.on('SIGTERM', shutdown);
}
