// Browser tests: a person browses Sentry (a stand-in) through ssogate, signing in at
// Encvoy ID's own engine (oidc-provider 8.8.1, tests/e2e/provider.mjs), in a real
// headless Chromium. Run with `node --test tests/e2e/` after `cargo build`.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import {
  artifactsDir,
  e2eDir,
  freePort,
  httpsGet,
  launchChromium,
  makeCerts,
  saveFailureArtifacts,
  screenshot,
  sleep,
  startGateway,
  startRedis,
  tempDir,
} from './lib.mjs';
import { startSentryStandin } from './sentry-standin.mjs';

const NAV_TIMEOUT = 20_000; // per navigation / wait
const TEST_TIMEOUT = 60_000; // per scenario
const PROVIDER_NAME = 'Encvoy ID';
const LOG_IN = `Log in with ${PROVIDER_NAME}`;
const DEEP_LINK = '/organizations/acme/issues/?query=is%3Aunresolved&project=1';
// The session cookie's name over https (HOST_COOKIE_NAME in src/config/mod.rs).
const SESSION_COOKIE = '__Host-ssogate';
const CLIENT_ID = 'sentry';
const CLIENT_SECRET = crypto.randomBytes(24).toString('hex');
const SESSION_SECRET = crypto.randomBytes(32).toString('hex');

const USERS = {
  alice: {
    login: 'alice', password: 'alice-correct-horse', email: 'alice@example.com',
    email_verified: true, name: 'Alice Admin', permissions: ['sentry'],
  },
  bob: {
    login: 'bob', password: 'bob-battery-staple', email: 'bob@example.com',
    email_verified: true, name: 'Bob Outsider', permissions: [],
  },
  carol: {
    login: 'carol', password: 'carol-unverified', email: 'carol@example.com',
    email_verified: false, name: 'Carol Unverified', permissions: ['sentry'],
  },
};

let dir;
let certs;
let standin;
let provider;
let gateway;
let browser;
let gw; // the gateway's origin, https://127.0.0.1:<port>
let target; // gw + DEEP_LINK
let replicaPorts; // [public, other] for the two replicas of scenario 10
const REPLICAS_CLIENT_ID = 'sentry-replicas';
let returningPort; // the gateway of scenario 11, with the default skip_sign_in_page
const RETURNING_CLIENT_ID = 'sentry-returning';
// The marker of a browser that signed in before (src/gateway/returning.rs), and how
// soon after that login a lost session still shows the page (RETURNING_PAUSE).
const RETURNING_COOKIE = `${SESSION_COOKIE}_returning`;
const RETURNING_PAUSE_MS = 5000;

// Every gateway but scenario 11's keeps the sign-in page (`skip_sign_in_page = false`),
// so each login shows its click.
function gatewayConfig({
  port, standinUrl, issuer, publicPort = port, clientId = CLIENT_ID, session = '',
  skipSignInPage = 'skip_sign_in_page = false',
}) {
  return `# written by tests/e2e/e2e.test.mjs
[server]
listen = "127.0.0.1:${port}"
public_url = "https://127.0.0.1:${publicPort}"
shutdown_grace = "2s"

[tls]
cert_file = ${JSON.stringify(certs.certFile)}
key_file = ${JSON.stringify(certs.keyFile)}

[upstream]
url = ${JSON.stringify(standinUrl)}

[oidc]
issuer = ${JSON.stringify(issuer)}
client_id = "${clientId}"
client_secret = "${CLIENT_SECRET}"
ca_file = ${JSON.stringify(certs.caFile)}
http_timeout = "3s"
${skipSignInPage}

[session]
secrets = ["${SESSION_SECRET}"]
${session}

[access]
preset = "sentry"
groups_claim = "permissions"
required_groups = ["sentry"]
`;
}

async function importProvider() {
  const file = path.join(e2eDir, 'provider.mjs');
  if (!fs.existsSync(file)) throw new Error(`${file} is missing (Encvoy ID's engine for these tests)`);
  return import('./provider.mjs');
}

// ---------------------------------------------------------------- scenario plumbing

/**
 * Runs one scenario. `open(label)` gives a page in a fresh browser context (own
 * cookies); every context is closed afterwards, and on failure each page's screenshot
 * and HTML are saved to the artifacts dir.
 */
async function scenario(t, name, body) {
  const pages = [];
  const open = async (label = 'main') => {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.setDefaultTimeout(NAV_TIMEOUT);
    page.setDefaultNavigationTimeout(NAV_TIMEOUT);
    pages.push({ label, page, context });
    return page;
  };
  const started = Date.now();
  try {
    await body(open);
    console.log(`[e2e] PASS ${name} (${Date.now() - started} ms)`);
  } catch (error) {
    const saved = [];
    for (const { label, page } of pages) saved.push(await saveFailureArtifacts(page, `${name}-${label}`));
    console.log(`[e2e] FAIL ${name} (${Date.now() - started} ms): ${error?.message?.split('\n')[0]}`);
    for (const base of saved) console.log(`[e2e]   artifacts: ${base}.png / .html`);
    console.log(`[e2e]   gateway log: ${gateway?.logFile}`);
    throw error;
  } finally {
    for (const { context } of pages) await context.close().catch(() => {});
  }
}

const atGateway = (pathname) => (url) => url.origin === gw && url.pathname === pathname;
const isTarget = (url) => url.href === target;

/** Text of the main element of the current page (gateway pages and the stand-in). */
const bodyText = (page) => page.locator('body').innerText();

/** Opens the deep link without a session: expects ssogate's sign-in page. */
async function openDeepLinkExpectSignIn(page) {
  const response = await page.goto(target);
  assert.ok(
    atGateway('/oauth2/sign_in')(new URL(page.url())),
    `expected ssogate's sign-in page, got ${page.url()}`,
  );
  assert.equal(response.status(), 200);
  assert.equal(await page.title(), 'Sign in');
  await page.getByRole('link', { name: LOG_IN }).waitFor();
  // The sign-in page carries the whole deep link, query included, as its return target.
  assert.equal(returnTarget(page), target);
}

/** The sign-in page's return target (`rd`), resolved against the gateway's origin. */
function returnTarget(page) {
  const rd = new URL(page.url()).searchParams.get('rd');
  return rd === null ? null : new URL(rd, gw).href;
}

/** Clicks "Log in with Encvoy ID" on ssogate's sign-in page. */
async function clickLogIn(page) {
  await page.getByRole('link', { name: LOG_IN }).click();
}

/** Waits for the provider's password form, then signs in as `user`. */
async function signInAtProvider(page, user) {
  await page.locator('input#password').waitFor();
  assert.equal(new URL(page.url()).origin, new URL(provider.issuer).origin, 'password form not at the provider');
  assert.equal(await page.title(), 'Encvoy ID — Sign in');
  await page.fill('input#login', user.login);
  await page.fill('input#password', user.password);
  await page.click('button#submit');
}

/**
 * After "Log in": either the provider asks for the password ('password') or the
 * browser comes straight back to the deep link ('back'), whichever happens first.
 */
async function passwordOrBack(page) {
  const password = page.locator('input#password').waitFor().then(() => 'password');
  const back = page.waitForURL(isTarget).then(() => 'back');
  const outcome = await Promise.race([password, back]);
  password.catch(() => {});
  back.catch(() => {});
  return outcome;
}

/** Waits until the stand-in page at the deep link shows `user` signed in. */
async function expectStandinFor(page, user) {
  await page.waitForURL(isTarget);
  assert.equal(page.url(), target, 'not back on exactly the deep link');
  await page.waitForFunction(() => document.getElementById('status')?.textContent === 'ok');
  assert.equal(await page.title(), 'Sentry stand-in');
  assert.equal(await page.textContent('#identity'), user.email);
}

/** The whole interactive login of `user`, from the deep link back to it. */
async function fullLogin(page, user) {
  await openDeepLinkExpectSignIn(page);
  await clickLogIn(page);
  await signInAtProvider(page, user);
  await expectStandinFor(page, user);
}

/** The main-frame document response for a URL matching `predicate`. */
function documentResponse(page, predicate, timeout = NAV_TIMEOUT) {
  return page.waitForResponse(
    (r) => r.request().resourceType() === 'document' && r.frame() === page.mainFrame() && predicate(new URL(r.url())),
    { timeout },
  );
}

const apiCalls = (since) => standin.requests.slice(since).filter((r) => r.url === '/api/0/organizations/');

// ---------------------------------------------------------------- the suite

describe('ssogate in front of Sentry, signing in at Encvoy ID, in headless Chromium', { timeout: 180_000 }, () => {
  before(async () => {
    const started = Date.now();
    for (const name of fs.readdirSync(artifactsDir())) {
      if (name.startsWith('failure-')) fs.rmSync(path.join(artifactsDir(), name), { force: true });
    }
    dir = tempDir();
    certs = makeCerts(path.join(dir, 'certs'));
    const { startProvider } = await importProvider();
    standin = await startSentryStandin();
    const port = await freePort();
    gw = `https://127.0.0.1:${port}`;
    target = gw + DEEP_LINK;
    replicaPorts = [await freePort(), await freePort()];
    const replicaOrigin = `https://127.0.0.1:${replicaPorts[0]}`;
    returningPort = await freePort();
    const returningOrigin = `https://127.0.0.1:${returningPort}`;
    provider = await startProvider({
      cert: certs.certPem,
      key: certs.keyPem,
      clients: [{
        client_id: CLIENT_ID,
        client_secret: CLIENT_SECRET,
        redirect_uris: [`${gw}/oauth2/callback`],
        post_logout_redirect_uris: [`${gw}/oauth2/sign_in`],
      }, {
        client_id: REPLICAS_CLIENT_ID,
        client_secret: CLIENT_SECRET,
        redirect_uris: [`${replicaOrigin}/oauth2/callback`],
        post_logout_redirect_uris: [`${replicaOrigin}/oauth2/sign_in`],
      }, {
        client_id: RETURNING_CLIENT_ID,
        client_secret: CLIENT_SECRET,
        redirect_uris: [`${returningOrigin}/oauth2/callback`],
        post_logout_redirect_uris: [`${returningOrigin}/oauth2/sign_in`],
      }],
      users: Object.values(USERS),
    });
    fs.writeFileSync(path.join(artifactsDir(), 'gateway.log'), '');
    gateway = await startGateway({
      port,
      configToml: gatewayConfig({ port, standinUrl: standin.url, issuer: provider.issuer }),
      ca: certs.caPem,
      dir,
    });
    browser = await launchChromium(certs.spki);
    console.log(`[e2e] gateway ${gw} (pid ${gateway.pid}), provider ${provider.issuer}, stand-in ${standin.url}`);
    console.log(`[e2e] artifacts in ${artifactsDir()}; set-up took ${Date.now() - started} ms`);
  });

  after(async () => {
    const started = Date.now();
    await browser?.close().catch(() => {});
    await gateway?.stop().catch(() => {});
    await provider?.close().catch(() => {});
    await standin?.close().catch(() => {});
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
    console.log(`[e2e] tear-down took ${Date.now() - started} ms`);
  });

  test('1. deep link -> sign-in page -> Encvoy ID login -> back on the same deep link, identity upstream', { timeout: TEST_TIMEOUT }, (t) =>
    scenario(t, 'deep-link-login', async (open) => {
      const page = await open();
      const mark = standin.requests.length;
      await openDeepLinkExpectSignIn(page);
      assert.equal(standin.requests.length, mark, 'the upstream was reached before sign-in');
      await clickLogIn(page);
      await signInAtProvider(page, USERS.alice);
      await expectStandinFor(page, USERS.alice);

      const pageLoads = standin.requests.slice(mark).filter((r) => r.method === 'GET' && !r.url.startsWith('/api/'));
      assert.ok(pageLoads.some((r) => r.url === DEEP_LINK), `the upstream never saw ${DEEP_LINK}`);
      const calls = apiCalls(mark);
      assert.ok(calls.length >= 1, 'the page API call never reached the upstream');
      for (const call of calls) {
        assert.equal(call.headers['x-forwarded-email'], USERS.alice.email);
        assert.equal(call.headers['x-forwarded-preferred-username'], 'alice');
        assert.equal(call.headers['x-forwarded-groups'], 'sentry');
        assert.ok(call.headers['x-forwarded-user'], 'no X-Forwarded-User');
        assert.equal(call.headers.authorization, undefined, 'an Authorization header reached Sentry');
        assert.doesNotMatch(call.headers.cookie ?? '', /ssogate/, 'the gateway cookie reached the upstream');
      }
      for (const r of standin.requests.slice(mark)) {
        assert.doesNotMatch(r.headers.cookie ?? '', /ssogate/, `the gateway cookie reached the upstream on ${r.url}`);
      }
      const whoami = JSON.parse(await page.textContent('#whoami'));
      assert.equal(whoami.username, 'alice');
    }));

  test('2. gateway session gone -> the page API call gets 401 -> reload -> back without a password', { timeout: TEST_TIMEOUT }, (t) =>
    scenario(t, 'session-expired-reload', async (open) => {
      const page = await open();
      await fullLogin(page, USERS.alice);

      await gateway.restart(); // sessions are in memory: all of them are gone now
      const mark = standin.requests.length;
      const unauthorized = page.waitForResponse((r) => r.url() === `${gw}/api/0/organizations/`);
      const signIn = page.waitForURL(atGateway('/oauth2/sign_in'));
      await page.evaluate(() => { window.checkSession(); }); // what Sentry's app does on its next API call
      const apiAnswer = await unauthorized;
      assert.equal(apiAnswer.status(), 401, 'the API call without a session must get 401, not a redirect');
      assert.match(apiAnswer.headers()['content-type'] ?? '', /application\/json/);
      await signIn; // the reload is a navigation: the gateway sends it to the sign-in page
      assert.equal(returnTarget(page), target);
      assert.equal(apiCalls(mark).length, 0, 'the API call without a session reached the upstream');

      // skip_sign_in_page is off in this suite: one click, and no password while the
      // provider session lives.
      await clickLogIn(page);
      assert.equal(await passwordOrBack(page), 'back', 'the provider asked for the password again');
      await expectStandinFor(page, USERS.alice);
      const reloaded = standin.requests.slice(mark).filter((r) => r.url === DEEP_LINK);
      assert.ok(reloaded.length >= 1);
      assert.match(reloaded.at(-1).headers.cookie ?? '', /session_expired=1/, 'the reload did not carry session_expired');
    }));

  test('3. sign out ends the gateway and the provider session', { timeout: TEST_TIMEOUT }, (t) =>
    scenario(t, 'sign-out', async (open) => {
      const page = await open();
      await fullLogin(page, USERS.alice);

      await page.click('#sign-out');
      // gateway -> provider's end_session (auto-submitting confirmation) -> back to ssogate's sign-in
      await page.waitForURL(atGateway('/oauth2/sign_in'));
      await page.getByRole('link', { name: LOG_IN }).waitFor();
      const cookies = await page.context().cookies(gw);
      assert.ok(!cookies.some((c) => c.name === SESSION_COOKIE), 'the session cookie is still there');
      // (ssogate's own pages forbid scripts by CSP, so ask by navigating.)
      const userinfo = await page.goto(`${gw}/oauth2/userinfo`);
      assert.equal(userinfo.status(), 401, 'still signed in at the gateway');

      await openDeepLinkExpectSignIn(page);
      await clickLogIn(page);
      assert.equal(await passwordOrBack(page), 'password', 'the provider session survived the sign-out');
      await signInAtProvider(page, USERS.alice);
      await expectStandinFor(page, USERS.alice);
    }));

  test('4. bob (no sentry permission) gets the 403 page, never the upstream', { timeout: TEST_TIMEOUT }, (t) =>
    scenario(t, 'forbidden-bob', async (open) => {
      const page = await open();
      const mark = standin.requests.length;
      await openDeepLinkExpectSignIn(page);
      await clickLogIn(page);
      const refused = documentResponse(page, isTarget);
      await signInAtProvider(page, USERS.bob);
      const response = await refused;
      assert.equal(response.status(), 403);
      assert.equal(await page.title(), 'Access denied');
      const text = await bodyText(page);
      assert.match(text, /Access denied/);
      assert.match(text, /bob@example\.com/);
      assert.match(text, /Refused by rule access.required_groups: the `permissions` claim has none of sentry/);
      await page.getByRole('link', { name: /Sign out/ }).waitFor();
      assert.equal(await page.locator('#status').count(), 0, 'the stand-in page was shown');
      assert.deepEqual(standin.requests.slice(mark), [], 'requests of bob reached the upstream');
      assert.ok(!standin.requests.some((r) => r.headers['x-forwarded-email'] === USERS.bob.email));
      // The API is refused too (ssogate's pages forbid scripts by CSP, so navigate).
      const api = await page.goto(`${gw}/api/0/organizations/`);
      assert.equal(api.status(), 403);
      assert.deepEqual(standin.requests.slice(mark), [], 'requests of bob reached the upstream');
    }));

  test('5. screenshots: sign-in, forbidden, error', { timeout: TEST_TIMEOUT }, (t) =>
    scenario(t, 'screenshots', async (open) => {
      const page = await open();
      await openDeepLinkExpectSignIn(page);
      const files = [await screenshot(page, 'sign-in')];

      await clickLogIn(page);
      const refused = documentResponse(page, isTarget);
      await signInAtProvider(page, USERS.bob);
      assert.equal((await refused).status(), 403);
      files.push(await screenshot(page, 'forbidden'));

      // A failed sign-in: a callback this browser never started.
      const failed = await page.goto(`${gw}/oauth2/callback?state=forged-state&code=forged-code`);
      assert.equal(failed.status(), 400);
      assert.equal(await page.title(), 'Sign-in failed');
      files.push(await screenshot(page, 'error'));

      for (const file of files) {
        const bytes = fs.readFileSync(file);
        assert.ok(bytes.length > 1000, `${file} is too small`);
        assert.equal(bytes.subarray(1, 4).toString(), 'PNG', `${file} is not a PNG`);
      }
      t.diagnostic(`screenshots: ${files.join(', ')}`);
    }));

  test('6. provider down: signed-in people keep browsing, new logins get a 503 page, recovery without restart', { timeout: TEST_TIMEOUT }, (t) =>
    scenario(t, 'provider-down', async (open) => {
      const alice = await open('alice');
      await fullLogin(alice, USERS.alice);

      await provider.stop();
      try {
        await alice.reload();
        await expectStandinFor(alice, USERS.alice);

        const visitor = await open('visitor');
        await openDeepLinkExpectSignIn(visitor);
        // Right after the provider went down: every login start asks it first.
        const started = Date.now();
        const startAnswer = documentResponse(visitor, atGateway('/oauth2/start'), 10_000);
        await clickLogIn(visitor);
        const response = await startAnswer;
        assert.equal(
          response.status(),
          503,
          `/oauth2/start answered ${response.status()} ${response.headers().location ?? ''}: ` +
            'expected ssogate\'s 503 page while the provider is down (liveness probe at /oauth2/start)',
        );
        await visitor.waitForLoadState('load');
        const elapsed = Date.now() - started;
        assert.ok(elapsed < 10_000, `the error page took ${elapsed} ms`);
        assert.ok(atGateway('/oauth2/start')(new URL(visitor.url())), `ended at ${visitor.url()}`);
        assert.match(await bodyText(visitor), /cannot be reached/);
        await screenshot(visitor, 'provider-down');
        t.diagnostic(`503 page after ${elapsed} ms`);
      } finally {
        await provider.start();
      }

      const later = await open('after-recovery');
      await fullLogin(later, USERS.alice);
    }));

  test('7. provider key rotation: the next login works', { timeout: TEST_TIMEOUT }, (t) =>
    scenario(t, 'key-rotation', async (open) => {
      const before = await open('before');
      await fullLogin(before, USERS.alice); // the gateway now holds the current key set
      const kid = await provider.rotateKeys();
      t.diagnostic(`new signing key ${kid}`);
      const after = await open('after');
      await fullLogin(after, USERS.alice);
      // The session from before the rotation is still good.
      await before.reload();
      await expectStandinFor(before, USERS.alice);
    }));

  test('8. slow provider (5 s > http_timeout 3 s): a clear error page for logins, others keep browsing', { timeout: TEST_TIMEOUT }, (t) =>
    scenario(t, 'slow-provider', async (open) => {
      const alice = await open('alice');
      await fullLogin(alice, USERS.alice);
      const visitor = await open('visitor');
      await openDeepLinkExpectSignIn(visitor);

      provider.setDelay(5000);
      try {
        // Right after the provider turned slow: every login start asks it first.
        const attempt = (async () => {
          const started = Date.now();
          const landed = visitor.waitForURL((url) => url.origin === gw && url.pathname.startsWith('/oauth2/'), {
            timeout: 10_000,
          }).catch(() => null);
          const answer = documentResponse(visitor, (url) => url.origin === gw && url.pathname.startsWith('/oauth2/'), 10_000);
          await clickLogIn(visitor);
          let response;
          try {
            response = await answer;
          } catch {
            assert.fail(`no ssogate page within 10 s of "Log in" (browser at ${visitor.url()}): ` +
              'the gateway did not notice the slow provider at /oauth2/start');
          }
          await landed;
          const elapsed = Date.now() - started;
          assert.ok(
            response.status() >= 500,
            `/oauth2/start answered ${response.status()} ${response.headers().location ?? ''}: expected an error page ` +
              'while the provider is slower than http_timeout',
          );
          await visitor.waitForLoadState('load');
          assert.match(await bodyText(visitor), /cannot be reached|unavailable|failed/i);
          return elapsed;
        })();
        const browsing = (async () => {
          const started = Date.now();
          await alice.reload();
          await expectStandinFor(alice, USERS.alice);
          return Date.now() - started;
        })();
        const [failedAfter, browsedIn] = await Promise.all([attempt, browsing]);
        t.diagnostic(`login error page after ${failedAfter} ms; signed-in page load took ${browsedIn} ms`);
      } finally {
        provider.setDelay(0);
      }
    }));

  test('9. provider sessions ended by an administrator: the next login asks for the password', { timeout: TEST_TIMEOUT }, (t) =>
    scenario(t, 'end-sessions', async (open) => {
      const page = await open();
      await fullLogin(page, USERS.alice);
      const context = page.context();

      // Control: with the provider session alive, a new login needs no password.
      await context.clearCookies({ name: SESSION_COOKIE });
      await openDeepLinkExpectSignIn(page);
      await clickLogIn(page);
      assert.equal(await passwordOrBack(page), 'back', 'the provider asked for the password while its session lived');
      await expectStandinFor(page, USERS.alice);

      const ended = await provider.endSessions('alice');
      assert.ok(ended >= 1, `endSessions removed ${ended} records`);

      await context.clearCookies({ name: SESSION_COOKIE });
      await openDeepLinkExpectSignIn(page);
      await clickLogIn(page);
      assert.equal(await passwordOrBack(page), 'password', 'no password asked after the provider session ended');
      await signInAtProvider(page, USERS.alice);
      await expectStandinFor(page, USERS.alice);
    }));

  test('10. two replicas sharing Redis: a login begun on one works on both, survives a Redis restart, and one sign-out ends it', { timeout: TEST_TIMEOUT }, (t) =>
    scenario(t, 'replicas', async (open) => {
      const redis = await startRedis(path.join(dir, 'redis'));
      const [publicPort, otherPort] = replicaPorts;
      const [a, b] = [`https://127.0.0.1:${publicPort}`, `https://127.0.0.1:${otherPort}`];
      const session = `store = "redis"\nredis_url = "${redis.url}"`;
      const replicas = [];
      try {
        for (const port of replicaPorts) {
          replicas.push(await startGateway({
            port,
            configToml: gatewayConfig({ port, publicPort, standinUrl: standin.url, issuer: provider.issuer, clientId: REPLICAS_CLIENT_ID, session }),
            ca: certs.caPem,
            dir: fs.mkdtempSync(path.join(dir, 'replica-')), // removed with the suite's dir
            logFile: path.join(artifactsDir(), `replica-${port === publicPort ? 'a' : 'b'}.log`),
          }));
        }
        const ready = async () => {
          for (const origin of [a, b]) {
            const deadline = Date.now() + 10000;
            while ((await httpsGet(`${origin}/ready`, { ca: certs.caPem })).status !== 200) {
              assert.ok(Date.now() < deadline, `${origin} not ready`);
              await sleep(100);
            }
          }
        };
        await ready();
        const showsAlice = async (page, origin) => {
          await page.waitForURL((url) => url.href === origin + DEEP_LINK);
          await page.waitForFunction(() => document.getElementById('status')?.textContent === 'ok');
          assert.equal(await page.textContent('#identity'), USERS.alice.email);
        };

        // The deep link reaches replica B; the login starts there, and the provider
        // returns to the public address (replica A), which finds the login B began.
        const page = await open();
        await page.goto(b + DEEP_LINK);
        assert.equal(new URL(page.url()).origin, b);
        assert.equal(new URL(page.url()).pathname, '/oauth2/sign_in');
        await clickLogIn(page);
        await signInAtProvider(page, USERS.alice);
        await showsAlice(page, a);
        // Cookies belong to the host, not the port: the same session works on B.
        await page.goto(b + DEEP_LINK);
        await showsAlice(page, b);

        // Redis restarts: A keeps serving the session it has cached; afterwards
        // both replicas still know it.
        await redis.stop();
        await page.goto(a + DEEP_LINK);
        await showsAlice(page, a);
        await redis.start();
        await ready();
        await page.goto(b + DEEP_LINK);
        await showsAlice(page, b);

        // Sign-out on B ends the session on A too, server-side: the cookie kept
        // from before (as a stolen copy would be) no longer works anywhere.
        const kept = (await page.context().cookies(a)).filter((c) => c.name === SESSION_COOKIE);
        assert.equal(kept.length, 1, 'no session cookie');
        await page.goto(`${b}/oauth2/sign_out`);
        await page.waitForURL((url) => url.origin === a && url.pathname === '/oauth2/sign_in');
        const replay = await open('stolen-cookie');
        await replay.context().addCookies(kept);
        for (const origin of [a, b]) {
          const userinfo = await replay.goto(`${origin}/oauth2/userinfo`);
          assert.equal(userinfo.status(), 401, `the old cookie still works at ${origin}`);
        }
      } finally {
        for (const replica of replicas) await replica.stop().catch(() => {});
        await redis.stop().catch(() => {});
      }
    }));

  test('11. a returning person (skip_sign_in_page = "returning", the default): session garbled -> 401 -> reload -> back with zero clicks and zero password prompts; signed out, the page again', { timeout: TEST_TIMEOUT }, (t) =>
    scenario(t, 'returning', async (open) => {
      const origin = `https://127.0.0.1:${returningPort}`;
      const deepLink = origin + DEEP_LINK;
      const at = (pathname) => (url) => url.origin === origin && url.pathname === pathname;
      const returning = await startGateway({
        port: returningPort,
        configToml: gatewayConfig({
          port: returningPort, standinUrl: standin.url, issuer: provider.issuer,
          clientId: RETURNING_CLIENT_ID, skipSignInPage: '',
        }),
        ca: certs.caPem,
        dir: fs.mkdtempSync(path.join(dir, 'returning-')), // removed with the suite's dir
        logFile: path.join(artifactsDir(), 'returning.log'),
      });
      try {
        const page = await open();
        const context = page.context();
        const showsAlice = async () => {
          await page.waitForURL((url) => url.href === deepLink);
          await page.waitForFunction(() => document.getElementById('status')?.textContent === 'ok');
          assert.equal(await page.textContent('#identity'), USERS.alice.email);
        };

        // The first visit: the sign-in page, its click, the password.
        await page.goto(deepLink);
        assert.ok(at('/oauth2/sign_in')(new URL(page.url())), `expected the sign-in page, got ${page.url()}`);
        await clickLogIn(page);
        await signInAtProvider(page, USERS.alice);
        await showsAlice();
        const marker = (await context.cookies(origin)).find((c) => c.name === RETURNING_COOKIE);
        assert.ok(marker, `no ${RETURNING_COOKIE} cookie after the login`);
        assert.ok(marker.httpOnly && marker.secure && marker.sameSite === 'Lax' && marker.path === '/', JSON.stringify(marker));
        assert.ok(marker.expires * 1000 > Date.now() + 399 * 24 * 3600 * 1000, `the marker expires ${new Date(marker.expires * 1000).toISOString()}`);
        await sleep(RETURNING_PAUSE_MS + 500); // a session lost sooner shows the page (no loop)

        // The session cookie garbled (as a lost session leaves it); every navigation of
        // the page from now on, and every password form the provider serves, counted.
        const session = (await context.cookies(origin)).find((c) => c.name === SESSION_COOKIE);
        await context.addCookies([{ ...session, value: 'garbled' }]);
        assert.equal((await context.cookies(origin)).find((c) => c.name === SESSION_COOKIE).value, 'garbled');
        const navigations = [];
        const providerPages = [];
        page.on('request', (r) => {
          if (r.isNavigationRequest() && r.frame() === page.mainFrame()) navigations.push(new URL(r.url()));
        });
        page.on('response', (r) => {
          if (r.request().resourceType() === 'document' && new URL(r.url()).origin === new URL(provider.issuer).origin) {
            providerPages.push(r.text().catch(() => ''));
          }
        });
        const mark = standin.requests.length;
        const unauthorized = page.waitForResponse((r) => r.url() === `${origin}/api/0/organizations/`);
        const started = Date.now();
        await page.evaluate(() => { window.checkSession(); }); // Sentry's next API call
        const apiAnswer = await unauthorized;
        assert.equal(apiAnswer.status(), 401, 'the API call without a session must get 401, not a redirect');
        await page.waitForResponse((r) => r.url() === deepLink && r.status() === 200 && r.request().isNavigationRequest());
        await showsAlice();
        const chain = navigations.map((u) => `${u.origin === origin ? 'gateway' : 'provider'} ${u.pathname}`);
        t.diagnostic(`401 -> reload -> deep link in ${Date.now() - started} ms: ${chain.join(' -> ')}`);
        const clicksNeeded = navigations.filter(at('/oauth2/sign_in')).length;
        const passwordPrompts = (await Promise.all(providerPages)).filter((html) => html.includes('id="password"')).length;
        assert.equal(clicksNeeded, 0, `the sign-in page (a click) was shown: ${chain.join(' -> ')}`);
        assert.equal(passwordPrompts, 0, `the provider asked for the password: ${chain.join(' -> ')}`);
        assert.ok(navigations.some(at('/oauth2/start')), `the reload did not start a login: ${chain.join(' -> ')}`);
        assert.ok(chain.some((c) => c.startsWith('provider')), 'the reload did not pass through the provider');
        const reloaded = standin.requests.slice(mark).filter((r) => r.url === DEEP_LINK);
        assert.match(reloaded.at(-1)?.headers.cookie ?? '', /session_expired=1/, 'the reload did not carry session_expired');
        assert.equal(reloaded.at(-1).headers['x-forwarded-email'], USERS.alice.email);

        // Signed out: the marker goes, and the page shows again (not the provider).
        await page.click('#sign-out');
        await page.waitForURL(at('/oauth2/sign_in'));
        await page.getByRole('link', { name: LOG_IN }).waitFor();
        assert.ok(!(await context.cookies(origin)).some((c) => c.name === RETURNING_COOKIE), 'the marker survived the sign-out');
        await page.goto(deepLink);
        assert.ok(at('/oauth2/sign_in')(new URL(page.url())), `after sign-out, expected the sign-in page, got ${page.url()}`);
        await page.getByRole('link', { name: LOG_IN }).waitFor();
      } finally {
        await returning.stop().catch(() => {});
      }
    }));
});
