// Shared helpers for the browser tests: a throwaway CA and leaf certificate, the
// ssogate process, free ports, headless Chromium, and failure artifacts.

import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

export const e2eDir = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(e2eDir, '..', '..');

/** Where screenshots, page HTML and the gateway log go. */
export function artifactsDir() {
  const dir = process.env.E2E_SCREENSHOTS || path.join(repoRoot, 'target', 'e2e-screenshots');
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

export function tempDir(prefix = 'ssogate-e2e-') {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

function openssl(args, options = {}) {
  return execFileSync('openssl', args, { stdio: ['pipe', 'pipe', 'pipe'], ...options });
}

/**
 * A throwaway CA and one leaf certificate for 127.0.0.1 and localhost (SAN IP + DNS),
 * shared by the provider and the gateway. Returns file paths, PEM strings and the
 * leaf's SPKI sha256 (base64) for Chromium's --ignore-certificate-errors-spki-list.
 */
export function makeCerts(dir) {
  fs.mkdirSync(dir, { recursive: true });
  const p = (name) => path.join(dir, name);
  fs.writeFileSync(
    p('ca.cnf'),
    [
      '[req]',
      'distinguished_name = dn',
      'prompt = no',
      'x509_extensions = v3_ca',
      '[dn]',
      'CN = ssogate e2e throwaway CA',
      '[v3_ca]',
      'basicConstraints = critical, CA:TRUE',
      'keyUsage = critical, keyCertSign, cRLSign',
      'subjectKeyIdentifier = hash',
      '',
    ].join('\n'),
  );
  fs.writeFileSync(
    p('leaf.ext'),
    [
      'basicConstraints = critical, CA:FALSE',
      'keyUsage = critical, digitalSignature',
      'extendedKeyUsage = serverAuth',
      'subjectAltName = IP:127.0.0.1, DNS:localhost',
      'subjectKeyIdentifier = hash',
      'authorityKeyIdentifier = keyid, issuer',
      '',
    ].join('\n'),
  );
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  openssl(['req', '-x509', '-config', p('ca.cnf'), ...ec, '-keyout', p('ca.key'), '-out', p('ca.pem'), '-days', '2']);
  openssl(['req', '-new', ...ec, '-subj', '/CN=127.0.0.1', '-keyout', p('leaf.key'), '-out', p('leaf.csr')]);
  openssl([
    'x509', '-req', '-in', p('leaf.csr'), '-CA', p('ca.pem'), '-CAkey', p('ca.key'),
    '-CAcreateserial', '-out', p('leaf.pem'), '-days', '2', '-sha256', '-extfile', p('leaf.ext'),
  ]);

  const pubkey = openssl(['x509', '-pubkey', '-noout', '-in', p('leaf.pem')]);
  const der = openssl(['pkey', '-pubin', '-outform', 'der'], { input: pubkey });
  const digest = openssl(['dgst', '-sha256', '-binary'], { input: der });
  const spki = digest.toString('base64');

  const leafPem = fs.readFileSync(p('leaf.pem'), 'utf8');
  // Cross-check the openssl pipeline against Node's own view of the certificate.
  const nodeSpki = crypto
    .createHash('sha256')
    .update(new crypto.X509Certificate(leafPem).publicKey.export({ type: 'spki', format: 'der' }))
    .digest('base64');
  if (nodeSpki !== spki) throw new Error(`SPKI mismatch: openssl ${spki}, node ${nodeSpki}`);

  return {
    caFile: p('ca.pem'),
    certFile: p('leaf.pem'),
    keyFile: p('leaf.key'),
    caPem: fs.readFileSync(p('ca.pem'), 'utf8'),
    certPem: leafPem,
    keyPem: fs.readFileSync(p('leaf.key'), 'utf8'),
    spki,
  };
}

/** A port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** One HTTPS GET trusting `ca`; resolves { status, headers, body }. */
export function httpsGet(url, { ca, timeout = 2000, headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const request = https.get(url, { ca, timeout, headers, agent: false }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk) => (body += chunk));
      response.on('end', () => resolve({ status: response.statusCode, headers: response.headers, body }));
      response.on('error', reject);
    });
    request.on('timeout', () => request.destroy(new Error(`timeout after ${timeout} ms: ${url}`)));
    request.on('error', reject);
  });
}

function tail(file, lines = 40) {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

/**
 * Starts `ssogate run --config <file>` and waits until GET /ping answers over TLS
 * (trusting `ca`). stderr and stdout go to `logFile` (appended across restarts).
 * `restart()` stops the process and starts it again on the same port: sessions live
 * in memory, so this is how a test deletes every session on the gateway side.
 */
export async function startGateway({
  port,
  configToml,
  ca,
  bin = process.env.SSOGATE_BIN || path.join(repoRoot, 'target', 'debug', 'ssogate'),
  logFile = path.join(artifactsDir(), 'gateway.log'),
  dir = tempDir('ssogate-gw-'),
  readyTimeoutMs = 15000,
}) {
  if (!fs.existsSync(bin)) {
    throw new Error(`gateway binary not found at ${bin}: run \`cargo build\` in ${repoRoot} or set SSOGATE_BIN`);
  }
  const configFile = path.join(dir, 'ssogate.toml');
  fs.writeFileSync(configFile, configToml);

  // Settings may come from the environment too (SSOGATE_*, OIDC_*): keep the
  // developer's own out, so the config file alone decides.
  const env = {};
  for (const [key, value] of Object.entries(process.env)) {
    if ((key.startsWith('SSOGATE_') && key !== 'SSOGATE_LOG') || key.startsWith('OIDC_')) continue;
    env[key] = value;
  }
  env.SSOGATE_LOG = process.env.SSOGATE_LOG || 'info';

  let child = null;
  let exited = null;

  async function start() {
    const log = fs.openSync(logFile, 'a');
    fs.writeSync(log, `\n===== ssogate start ${new Date().toISOString()} port ${port} =====\n`);
    child = spawn(bin, ['run', '--config', configFile], { env, stdio: ['ignore', log, log] });
    fs.closeSync(log);
    exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    let early = null;
    exited.then((status) => (early = status));
    const deadline = Date.now() + readyTimeoutMs;
    for (;;) {
      if (early) {
        throw new Error(`ssogate exited during startup (${JSON.stringify(early)}); log ${logFile}:\n${tail(logFile)}`);
      }
      try {
        const answer = await httpsGet(`https://127.0.0.1:${port}/ping`, { ca, timeout: 1000 });
        if (answer.status === 200) return;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) {
        throw new Error(`ssogate did not answer /ping within ${readyTimeoutMs} ms; log ${logFile}:\n${tail(logFile)}`);
      }
      await sleep(100);
    }
  }

  async function stop() {
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    let timer;
    const timeout = new Promise((resolve) => {
      timer = setTimeout(() => resolve('timeout'), 10000);
    });
    const outcome = await Promise.race([exited, timeout]);
    clearTimeout(timer);
    if (outcome === 'timeout') {
      child.kill('SIGKILL');
      await exited;
    }
  }

  async function restart() {
    await stop();
    await start();
  }

  await start();
  return {
    port,
    url: `https://127.0.0.1:${port}`,
    configFile,
    logFile,
    stop,
    restart,
    get pid() {
      return child?.pid;
    },
  };
}

/** Headless Chromium that trusts exactly our test leaf key (SPKI pin), nothing else. */
export function launchChromium(spki) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--ignore-certificate-errors-spki-list=' + spki,
    ],
  });
}

/** Saves a full-page screenshot as `<name>.png` in the artifacts dir; returns its path. */
export async function screenshot(page, name) {
  const file = path.join(artifactsDir(), `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/** Screenshot + HTML of the page when a test fails, for debugging. Never throws. */
export async function saveFailureArtifacts(page, name) {
  const safe = name.replace(/[^a-z0-9-]+/gi, '-').replace(/^-|-$/g, '').toLowerCase();
  const base = path.join(artifactsDir(), `failure-${safe}`);
  try {
    await page.screenshot({ path: `${base}.png`, fullPage: true, timeout: 5000 });
  } catch {
    // the page may be gone
  }
  try {
    fs.writeFileSync(`${base}.html`, `<!-- ${page.url()} -->\n${await page.content()}`);
  } catch {
    // the page may be gone
  }
  return base;
}

/** Whether a Redis at 127.0.0.1:`port` answers PING. */
function redisAnswers(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    const done = (ok) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1000, () => done(false));
    socket.on('error', () => done(false));
    socket.on('connect', () => socket.write('PING\r\n'));
    socket.on('data', (data) => done(data.toString().startsWith('+PONG')));
  });
}

/**
 * Debian's `redis-server` on a free loopback port, with an append-only file in `dir`,
 * so `stop()` (SIGTERM) and `start()` keep its data, as a production Redis should.
 */
export async function startRedis(dir) {
  fs.mkdirSync(dir, { recursive: true });
  const port = await freePort();
  let child = null;
  async function start() {
    const log = fs.openSync(path.join(dir, 'redis.log'), 'a');
    child = spawn('redis-server', ['--bind', '127.0.0.1', '--port', String(port), '--dir', dir,
      '--appendonly', 'yes', '--save', ''], { stdio: ['ignore', log, log] });
    fs.closeSync(log);
    const deadline = Date.now() + 10000;
    while (!(await redisAnswers(port))) {
      if (Date.now() > deadline) throw new Error(`redis-server did not start; log in ${dir}/redis.log`);
      await sleep(50);
    }
  }
  async function stop() {
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
  }
  await start();
  return { url: `redis://127.0.0.1:${port}/0`, start, stop };
}
