// Opens a study's viewer link in Debian's headless Chromium, as a radiologist would, and reports
// what the viewport showed. Used by tests/viewer/test_viewer_browser.py and bench/viewer.py.
//
//   node open_study.mjs '{"viewerUrl": ..., "username": ..., "password": ..., ...}'
//
// With "saveMeasurement": a report name, it also draws a length, saves it as a DICOM SR (OHIF's
// "Create SR", STOW-RS through the front) and waits for the report's series to be shown.
// With "openSeries": words of a series' description, it opens that series from the study
// browser and reports the SVG shapes and texts drawn over the viewport ("overlay"), and whether
// OHIF needed another render to draw them ("overlayNeededARender").
//
// Prints one JSON line: {"ok", "steps": [...], "viewport": {pixel statistics}, "timings": {...}}.
// Pixel statistics come from a screenshot of the viewport canvas decoded in the page (the
// canvas itself may be WebGL, which getImageData cannot read).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const options = JSON.parse(process.argv[2]);
const timeoutMs = options.timeoutMs ?? 60000;
const steps = [];
const step = (name, extra = {}) => steps.push({ name, at: Date.now(), ...extra });

// Flags measured on these machines (shared NOTES, "OHIF"): without the background-networking
// ones Chromium keeps dialling hosts this closed network refuses.
const FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

async function viewportStatistics(page) {
  const canvas = page.locator('[data-viewport-uid] canvas, canvas.cornerstone-canvas').first();
  if ((await canvas.count()) === 0) return null;
  const png = await canvas.screenshot({ timeout: 5000 });
  return page.evaluate(async (base64) => {
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const bitmap = await createImageBitmap(new Blob([bytes], { type: 'image/png' }));
    const scratch = new OffscreenCanvas(bitmap.width, bitmap.height);
    const context = scratch.getContext('2d');
    context.drawImage(bitmap, 0, 0);
    const { data } = context.getImageData(0, 0, bitmap.width, bitmap.height);
    let sum = 0;
    let sumSquares = 0;
    let nonBlack = 0;
    const pixels = data.length / 4;
    for (let i = 0; i < data.length; i += 4) {
      const luma = 0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2];
      sum += luma;
      sumSquares += luma * luma;
      if (luma > 16) nonBlack += 1;
    }
    const mean = sum / pixels;
    return {
      width: bitmap.width,
      height: bitmap.height,
      mean,
      std: Math.sqrt(Math.max(0, sumSquares / pixels - mean * mean)),
      nonBlackFraction: nonBlack / pixels,
    };
  }, png.toString('base64'));
}

function rendered(stats) {
  return stats !== null && stats.std > (options.minStd ?? 10) &&
    stats.nonBlackFraction > (options.minNonBlack ?? 0.05);
}

async function waitForImage(page) {
  const deadline = Date.now() + timeoutMs;
  let last = null;
  while (Date.now() < deadline) {
    try {
      last = await viewportStatistics(page);
    } catch (error) {
      last = { error: String(error).slice(0, 200) };
    }
    if (last && !last.error && rendered(last)) return last;
    await page.waitForTimeout(100);
  }
  throw new Error(`no image rendered within ${timeoutMs} ms: ${JSON.stringify(last)}`);
}

async function logIn(page) {
  await page.fill('input[name=username]', options.username);
  await page.fill('input[name=password]', options.password);
  await Promise.all([
    page.waitForURL((url) => url.pathname !== '/login'),
    page.click('button[type=submit]'),
  ]);
  loggedIn = true;
}

const profile = mkdtempSync(join(tmpdir(), 'viewer-chromium-'));
const failures = [];
const consoleErrors = [];
let loggedIn = false;
// Content-Security-Policy violations: the page's securitypolicyviolation events (recorded by
// an init script in every document) and Chromium's console reports (workers' included).
const cspViolations = [];
const result = { ok: false, steps, timings: {}, httpFailures: failures, consoleErrors, cspViolations };
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: options.chromium ?? '/usr/bin/chromium',
    headless: true,
    args: FLAGS,
    viewport: { width: 1280, height: 900 },
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(timeoutMs);
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (event) => {
      console.error(
        `CSP violation: ${event.violatedDirective} blocked ${event.blockedURI} at ${event.sourceFile}`,
      );
    });
  });
  const onConsole = (message) => {
    const text = message.text();
    if (/Content Security Policy|CSP violation/.test(text)) cspViolations.push(text.slice(0, 500));
    if (message.type() === 'error' || options.debug) consoleErrors.push(text.slice(0, 300));
  };
  page.on('console', onConsole);
  page.on('pageerror', (error) => consoleErrors.push(`uncaught: ${String(error).slice(0, 300)}`));
  page.on('worker', (worker) => worker.on('console', onConsole));
  page.on('response', (answer) => {
    if (options.debug && new URL(answer.url()).pathname.startsWith('/dicom-web')) {
      failures.push(`debug ${answer.status()} ${answer.url().slice(0, 160)}`);
    }
    // Before logging in, the link itself answers 401 with the login page: that is expected.
    if (answer.status() >= 400 && loggedIn) {
      failures.push(`${answer.status()} ${new URL(answer.url()).pathname}`);
    }
  });

  if (options.loginFirst) {
    // The benchmark: a user already logged in opens the link.
    await page.goto(new URL('/login', options.viewerUrl).href);
    await logIn(page);
    step('logged in');
  }
  const opened = Date.now();
  const first = await page.goto(options.viewerUrl);
  step('opened viewer link', { status: first.status(), url: page.url() });
  if (!options.loginFirst) {
    result.loginPageStatus = first.status();
    result.loginFormShown = (await page.locator('form#login').count()) === 1;
    await logIn(page);
    step('logged in', { url: page.url() });
  }
  result.viewport = await waitForImage(page);
  result.timings.linkToImageMs = Date.now() - opened;
  step('image rendered');
  result.viewerPath = new URL(page.url()).pathname;

  if (options.saveMeasurement) {
    // A radiologist measures a length and saves it as a report: OHIF stores a DICOM SR with
    // STOW-RS through the front (supportsStow in viewer/app-config.js).
    await page.locator('[data-cy="Length"]').first().click();
    const canvas = page.locator('[data-viewport-uid] canvas, canvas.cornerstone-canvas').first();
    const box = await canvas.boundingBox();
    await page.mouse.move(box.x + box.width * 0.35, box.y + box.height * 0.5);
    await page.mouse.down();
    await page.mouse.move(box.x + box.width * 0.6, box.y + box.height * 0.55, { steps: 12 });
    await page.mouse.up();
    await page.locator('[data-cy="prompt-begin-tracking-yes-btn"]').click();
    const notice = page.locator('[data-cy="confirm-and-hide-button"]');
    if (await notice.count()) await notice.click();
    await page.locator('[data-cy="trackedMeasurements-btn"]').click();
    await page.getByRole('button', { name: 'Create SR' }).click();
    await page.locator('[data-cy="dialog-input"]').fill(options.saveMeasurement);
    const stored = page.waitForResponse(
      (answer) => answer.request().method() === 'POST' &&
        new URL(answer.url()).pathname === '/dicom-web/studies',
    );
    await page.locator('[data-cy="input-dialog-save-button"]').click();
    const answer = await stored;
    result.stowStatus = answer.status();
    step('measurement saved', { status: answer.status() });
    // The report comes back as a series of the study, shown in the study browser.
    await page.getByText(options.saveMeasurement, { exact: false }).first().waitFor();
    result.reportShown = true;
  }
  if (options.openSeries) {
    // A series of the study opened from the study browser, as a radiologist opens a report:
    // a double click on its thumbnail. For a measurement report (TID 1500), OHIF's SR viewport
    // shows the image of its first region, with each region drawn as SVG over the image.
    await page.getByText(options.openSeries, { exact: false }).first().dblclick();
    step('series opened');
    const shapes = page.locator('svg.svg-layer polyline');
    // OHIF 3.12's SR viewport tells its SR tool which regions to draw without asking for a
    // render (setTrackingUniqueIdentifiersForElement): when the image was drawn first, the
    // regions appear on the viewport's next render, which a reader's first interaction gives
    // (a third of the runs here, whether Orthanc or the fronts wrote the series metadata). A
    // window a pixel narrower gives that render here; whether it was needed is reported.
    result.overlayNeededARender = false;
    try {
      await shapes.first().waitFor({ timeout: Math.min(5000, timeoutMs) });
    } catch {
      result.overlayNeededARender = true;
      const size = page.viewportSize();
      await page.setViewportSize({ width: size.width - 1, height: size.height });
      await shapes.first().waitFor();
    }
    step('overlay drawn');
    const canvas = page.locator('[data-viewport-uid] canvas, canvas.cornerstone-canvas').first();
    result.overlay = {
      canvas: await canvas.boundingBox(),
      polylines: await shapes.evaluateAll((elements) =>
        elements.map((element) => {
          const { x, y, width, height } = element.getBoundingClientRect();
          return { points: element.getAttribute('points'), box: { x, y, width, height } };
        }),
      ),
      texts: await page.locator('svg.svg-layer text').allTextContents(),
    };
  }
  if (options.studyListText) {
    await page.goto(new URL('/', options.viewerUrl).href);
    await page.getByText(options.studyListText, { exact: false }).first().waitFor();
    result.studyListShowsStudy = true;
    step('study list shows the study');
  }
  if (options.screenshot) await page.screenshot({ path: options.screenshot });
  result.ok = true;
} catch (error) {
  result.error = String(error.stack || error);
  const page = context?.pages()[0];
  if (page && options.screenshot) await page.screenshot({ path: options.screenshot }).catch(() => {});
} finally {
  if (context) await context.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(result));
