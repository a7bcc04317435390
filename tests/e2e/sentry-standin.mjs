// A stand-in for self-hosted Sentry behind the gateway: plain HTTP on 127.0.0.1,
// recording every request. Its page behaves like Sentry's web app where it matters
// to the gateway (SENTRY.md section 2): it calls /api/0/organizations/ with
// `Accept: application/json; charset=utf-8` and credentials, and on 401 sets the
// `session_expired` cookie and reloads the page.

import http from 'node:http';

const PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Sentry stand-in</title>
<style>body{font-family:sans-serif;margin:2rem}code,pre{background:#eee;padding:.1rem .3rem}</style>
</head>
<body>
<h1>Sentry stand-in</h1>
<p>Page: <code id="path"></code></p>
<p>API status: <b id="status">loading</b></p>
<p>Signed in as: <b id="identity"></b></p>
<pre id="whoami"></pre>
<p><a id="sign-out" href="/oauth2/sign_out">Sign out</a></p>
<script>
document.getElementById('path').textContent = location.pathname + location.search;
window.checkSession = async function checkSession() {
  const status = document.getElementById('status');
  status.textContent = 'loading';
  let response;
  try {
    response = await fetch('/api/0/organizations/', {
      credentials: 'include',
      headers: { Accept: 'application/json; charset=utf-8' },
    });
  } catch (e) {
    status.textContent = 'error: ' + e;
    return 'error';
  }
  if (response.status === 401) {
    // What Sentry's app does: remember why, and reload into the login.
    document.cookie = 'session_expired=1; path=/';
    status.textContent = 'expired';
    location.reload();
    return 'reload';
  }
  if (!response.ok) {
    status.textContent = 'error: HTTP ' + response.status;
    return 'error';
  }
  const me = await response.json();
  document.getElementById('identity').textContent = me.email || me.user || '';
  document.getElementById('whoami').textContent = JSON.stringify(me, null, 2);
  document.cookie = 'session_expired=; path=/; max-age=0';
  status.textContent = 'ok';
  return 'ok';
};
window.checkSession();
</script>
</body>
</html>
`;

/**
 * Starts the stand-in. Returns { url, port, requests, reset(), close() }; each entry of
 * `requests` is { method, url, headers, at } (headers lower-cased, as Node gives them).
 */
export function startSentryStandin({ host = '127.0.0.1', port = 0 } = {}) {
  const requests = [];
  const server = http.createServer((req, res) => {
    requests.push({ method: req.method, url: req.url, headers: { ...req.headers }, at: Date.now() });
    req.resume();
    const pathname = new URL(req.url, 'http://standin').pathname;
    const json = (status, value) => {
      const body = JSON.stringify(value);
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    };
    if (pathname === '/api/0/organizations/') {
      const h = req.headers;
      return json(200, {
        user: h['x-forwarded-user'] ?? null,
        email: h['x-forwarded-email'] ?? null,
        username: h['x-forwarded-preferred-username'] ?? null,
        groups: h['x-forwarded-groups'] ?? null,
      });
    }
    if (pathname.startsWith('/api/')) return json(404, { detail: 'Not found' });
    if (req.method !== 'GET' && req.method !== 'HEAD') return json(200, { ok: true });
    res.writeHead(200, {
      'content-type': 'text/html; charset=utf-8',
      'content-length': Buffer.byteLength(PAGE),
      'cache-control': 'no-store',
    });
    res.end(req.method === 'HEAD' ? undefined : PAGE);
  });

  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      const actual = server.address().port;
      resolve({
        port: actual,
        url: `http://${host}:${actual}`,
        requests,
        reset() {
          requests.length = 0;
        },
        close() {
          return new Promise((done) => {
            server.closeAllConnections?.();
            server.close(() => done());
          });
        },
      });
    });
  });
}
