// Drives Debian's headless Chromium through the department's pages (/login, /app/...) step by
// step, as a user would: by accessible labels, roles and names, the keyboard, live updates
// awaited without a reload, axe-core scans, print media. Used through tests/support/app_browser.py.
//
//   node app_session.mjs '{"baseUrl": ..., "timeoutMs": 30000, "steps": [...]}'
//
// Options: baseUrl, steps; timeoutMs (each action's, default 30000); viewport ({width, height},
// default 1280x900); artifactsDir (a screenshot of the page is saved there when a step fails);
// allowConsoleErrors (regular expressions of console errors a test expects); chromium.
//
// Each step is an object with one action key (its value the action's argument) and optional
// modifiers beside it (within, exact, timeoutMs). The actions:
//   {"login": {username, password, totpCode?}}   through the real form (the one shown, else /login)
//   {"goto": path} or {"goto": {path, status?}}
//   {"reload": true}
//   {"fill": {label, value}}       {"select": {label, value}}       {"check"|"uncheck": {label}}
//   {"click": {role, name}}        (getByRole; exact name unless "exact": false beside it)
//   {"press": key}                 (to the focused element, e.g. "Enter", "Tab", "Shift+Tab")
//   {"keyboard": {name, role?, maxTabs?, fromTop?, reverse?}}  Tab until that element has focus
//   {"keyboardAll": true}          Tab from the top: every visible control gets a visible focus
//   {"expectText": text, within?}  {"expectNoText": text, within?}  {"expectUrl": regex}
//   {"waitForText": text, timeoutMs?, within?}   a live update: fails if the page navigated
//   {"read": css}                  records the innerText of every match (row order, say)
//   {"axe": {name, include?}}      records serious and critical violations under result.axe[name]
//   {"viewport": {width, height}}  {"noHorizontalScroll": true}
//   {"print": {path, expectHidden?: [css], expectText?: [text]}}   print media; .pdf -> a PDF
//   {"screenshot": path}
//   {"download": {role, name, expectContentType?, path?}}   clicks and saves what comes
//   {"pause": label}               prints {"pause": label} and waits for a line on stdin: the
//                                  test acts meanwhile (sends a study while the page is open)
//   {"section": name}              starts a section (one page of a tour of several): see below
// `within` is a CSS selector or {role, name}.
//
// Sections let one session (one browser launch, one login) check several pages, each failing on
// its own: a step that fails inside a section ends that section, not the run, which goes on at
// the next section. result.sections[name] holds the section's own record: ok, its steps, its axe
// results, the policy violations and page errors that came while it ran, and, when it failed,
// error, failedStep and the screenshot of its page. A step failing before the first section
// ends the run as without sections; result.beforeSections holds the violations and errors that
// came before the first section.
//
// Prints one JSON line last: {"ok", "steps": [{name, ms, ...}], "axe": {name: [violations]},
// "cspViolations", "errors", "consoleErrors", "httpErrors", "error"?, "failedStep"?,
// "screenshot"?, "sections"?, "beforeSections"?}. ok is false when a step failed, or on any
// Content-Security-Policy violation or uncaught page error (or console error not allowed).
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const options = JSON.parse(process.argv[2]);
const timeoutMs = options.timeoutMs ?? 30000;
const require = createRequire(import.meta.url);
// Run in the page through the DevTools protocol (page.evaluate), which the page's
// Content-Security-Policy does not govern: a <script> tag (page.addScriptTag) would be refused
// by it and counted as a violation.
const AXE_SOURCE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
const AXE_TAGS = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'];
const AXE_IMPACTS = new Set(['serious', 'critical']);

// As open_study.mjs: flags measured on these machines (shared NOTES, "OHIF").
const FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

const ACTIONS = [
  'login', 'goto', 'reload', 'fill', 'select', 'check', 'uncheck', 'click', 'press', 'keyboard', 'keyboardAll',
  'expectText', 'expectNoText', 'expectUrl', 'waitForText', 'read', 'axe', 'viewport',
  'noHorizontalScroll', 'print', 'screenshot', 'download', 'pause', 'section',
];

const steps = [];
const axe = {};
const cspViolations = [];
const errors = [];
const consoleErrors = [];
const httpErrors = [];
const allowed = (options.allowConsoleErrors ?? []).map((pattern) => new RegExp(pattern));
const result = { ok: false, steps, axe, cspViolations, errors, consoleErrors, httpErrors };
const sections = {};

class StepFailed extends Error {}

function actionOf(step) {
  const found = Object.keys(step).filter((key) => ACTIONS.includes(key));
  if (found.length !== 1) {
    throw new StepFailed(`a step needs exactly one action of ${ACTIONS.join(', ')}: ${JSON.stringify(step)}`);
  }
  return found[0];
}

function scope(page, within) {
  if (within === undefined) return page;
  if (typeof within === 'string') return page.locator(within).first();
  return page.getByRole(within.role, { name: within.name, exact: within.exact ?? true }).first();
}

function url(path) {
  return new URL(path, options.baseUrl).href;
}

async function navigation(page, action) {
  // A form post or link: resolves once the main frame has navigated and loaded.
  const navigated = page.waitForEvent('framenavigated', (frame) => frame === page.mainFrame());
  await action();
  await navigated;
  await page.waitForLoadState('load');
}

async function logIn(page, { username, password, totpCode }) {
  const userField = page.getByLabel('User name', { exact: true });
  if ((await userField.count()) === 0) await page.goto(url('/login'));
  await userField.fill(username);
  await page.getByLabel('Password', { exact: true }).fill(password);
  await navigation(page, () => page.getByRole('button', { name: 'Log in', exact: true }).click());
  const code = page.getByLabel('Two-factor code', { exact: true });
  if (totpCode !== undefined && (await code.count()) > 0) {
    await page.getByLabel('Password', { exact: true }).fill(password);
    await code.fill(totpCode);
    await navigation(page, () => page.getByRole('button', { name: 'Log in', exact: true }).click());
  }
  if ((await page.getByLabel('Password', { exact: true }).count()) > 0) {
    const alert = page.getByRole('alert');
    const said = (await alert.count()) ? await alert.first().innerText() : 'no message';
    throw new StepFailed(`login as ${username} refused: ${said}`);
  }
  return { path: new URL(page.url()).pathname };
}

async function focusedDescription(page) {
  return page.evaluate(() => {
    const element = document.activeElement;
    if (!element || element === document.body) return 'body';
    const text = (element.getAttribute('aria-label') || element.innerText || element.name || '')
      .trim().slice(0, 40);
    return `${element.tagName.toLowerCase()}${element.id ? `#${element.id}` : ''} "${text}"`;
  });
}

async function keyboardReach(page, { name, role, maxTabs = 60, fromTop = false, reverse = false }, exact) {
  const target = role
    ? page.getByRole(role, { name, exact })
    : page.getByLabel(name, { exact })
      .or(page.getByRole('button', { name, exact }))
      .or(page.getByRole('link', { name, exact }));
  if ((await target.count()) === 0) throw new StepFailed(`no element named "${name}" on the page`);
  if (fromTop) {
    // Focusing the body moves the sequential focus navigation starting point to the top.
    await page.evaluate(() => {
      document.activeElement?.blur();
      document.body.setAttribute('tabindex', '-1');
      document.body.focus();
      document.body.removeAttribute('tabindex');
    });
  }
  const path = [];
  for (let tabs = 1; tabs <= maxTabs; tabs += 1) {
    await page.keyboard.press(reverse ? 'Shift+Tab' : 'Tab');
    path.push(await focusedDescription(page));
    const focused = await target.evaluateAll((elements) => {
      const element = elements.find((candidate) => candidate === document.activeElement);
      if (!element) return null;
      // What the user sees of the focus: an outline (Chromium's focus ring is "auto") or a shadow.
      const style = getComputedStyle(element);
      const outline = style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) > 0;
      return { focusVisible: outline || style.boxShadow !== 'none' };
    });
    if (focused) return { tabs, path, ...focused };
  }
  throw new StepFailed(`"${name}" not reached with ${maxTabs} Tab presses; focus went: ${path.join(' > ')}`);
}

// Every visible control of the page, reached with Tab from the top, each with a visible focus
// (radio buttons count once per group: arrows move within it).
async function keyboardAll(page, { maxTabs = 300 }) {
  const controls = await page.evaluate(() => {
    const selector = 'a[href], button, input:not([type=hidden]), select, textarea, summary, ' +
      '[tabindex]:not([tabindex="-1"]), [contenteditable="true"]';
    const found = [...document.querySelectorAll(selector)].filter((element) =>
      !element.disabled && element.getAttribute('tabindex') !== '-1' &&
      element.checkVisibility({ visibilityProperty: true }));
    window.__keyboardControls = found;
    const key = (element) => (element.type === 'radio' && element.name ? `radio:${element.name}` : null);
    window.__keyboardKey = (element) => {
      const index = found.indexOf(element);
      return index < 0 ? null : key(element) ?? String(index);
    };
    return found.map((element, index) => ({
      key: key(element) ?? String(index),
      what: `${element.tagName.toLowerCase()} "${(element.getAttribute('aria-label') || element.innerText || element.name || element.id || '').trim().slice(0, 40)}"`,
    }));
  });
  await page.evaluate(() => {
    document.activeElement?.blur();
    document.body.setAttribute('tabindex', '-1');
    document.body.focus();
    document.body.removeAttribute('tabindex');
  });
  const reached = new Map();
  let tabs = 0;
  for (; tabs < maxTabs; tabs += 1) {
    await page.keyboard.press('Tab');
    const focus = await page.evaluate(() => {
      const element = document.activeElement;
      if (!element || element === document.body) return { body: true };
      const style = getComputedStyle(element);
      const outline = style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) > 0;
      return { key: window.__keyboardKey(element), visible: outline || style.boxShadow !== 'none' };
    });
    if (focus.body || (focus.key !== null && reached.has(focus.key))) break;
    if (focus.key !== null) reached.set(focus.key, focus.visible);
  }
  const unreached = controls.filter((control) => !reached.has(control.key)).map((c) => c.what);
  const noVisibleFocus = controls.filter((control) => reached.get(control.key) === false).map((c) => c.what);
  if (unreached.length || noVisibleFocus.length) {
    throw new StepFailed(`with the keyboard: not reached ${JSON.stringify(unreached)}; ` +
      `focus not shown on ${JSON.stringify(noVisibleFocus)}`);
  }
  return { controls: controls.length, tabs };
}

async function runAxe(page, { name, include }) {
  if (!(await page.evaluate(() => typeof window.axe === 'object'))) await page.evaluate(AXE_SOURCE);
  const found = await page.evaluate(
    async ({ tags, include }) => {
      const context = include ? { include: [include] } : document;
      const answer = await window.axe.run(context, {
        runOnly: { type: 'tag', values: tags },
        resultTypes: ['violations'],
      });
      return answer.violations.map((violation) => ({
        id: violation.id,
        impact: violation.impact,
        help: violation.help,
        helpUrl: violation.helpUrl,
        nodes: violation.nodes.slice(0, 10).map((node) => ({
          target: node.target,
          impact: node.impact,
          summary: (node.failureSummary ?? '').slice(0, 300),
          html: node.html.slice(0, 200),
        })),
      }));
    },
    { tags: AXE_TAGS, include },
  );
  axe[name] = found.filter((violation) => AXE_IMPACTS.has(violation.impact));
  if (section) section.axe[name] = axe[name];
  return {
    serious: axe[name].length,
    minor: found.filter((violation) => !AXE_IMPACTS.has(violation.impact)).map((v) => v.id),
  };
}

let stdinLines;
async function pause(label) {
  console.log(JSON.stringify({ pause: label }));
  stdinLines ??= createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  const { value, done } = await stdinLines.next();
  if (done || value.trim() !== 'continue') throw new StepFailed(`pause "${label}": told ${value ?? 'nothing'}`);
  return {};
}

async function perform(page, context, step) {
  const action = actionOf(step);
  const argument = step[action];
  const exact = step.exact ?? true;
  const where = scope(page, step.within);
  switch (action) {
    case 'login':
      return logIn(page, argument);
    case 'goto': {
      const target = typeof argument === 'string' ? { path: argument } : argument;
      const answer = await page.goto(url(target.path));
      const status = answer?.status();
      if (target.status !== undefined && status !== target.status) {
        throw new StepFailed(`${target.path} answered ${status}, not ${target.status}`);
      }
      return { status };
    }
    case 'reload':
      return { status: (await page.reload())?.status() };
    case 'fill':
      await where.getByLabel(argument.label, { exact }).fill(String(argument.value));
      return {};
    case 'select':
      await where.getByLabel(argument.label, { exact }).selectOption(String(argument.value));
      return {};
    case 'check':
      await where.getByLabel(argument.label, { exact }).check();
      return {};
    case 'uncheck':
      await where.getByLabel(argument.label, { exact }).uncheck();
      return {};
    case 'click':
      await where.getByRole(argument.role, { name: argument.name, exact }).click();
      await page.waitForLoadState('load');
      return {};
    case 'press':
      await page.keyboard.press(argument);
      await page.waitForLoadState('load');
      return {};
    case 'keyboard':
      return keyboardReach(page, argument, exact);
    case 'keyboardAll':
      return keyboardAll(page, argument === true ? {} : argument);
    case 'expectText':
      await where.getByText(argument, { exact: step.exact ?? false }).first().waitFor({ state: 'visible' });
      return {};
    case 'expectNoText': {
      await page.waitForLoadState('load');
      const shown = await where.getByText(argument, { exact: step.exact ?? false }).count();
      if (shown) throw new StepFailed(`"${argument}" is on the page ${shown} time(s)`);
      return {};
    }
    case 'expectUrl':
      await page.waitForURL(new RegExp(argument));
      return { url: page.url() };
    case 'waitForText': {
      let navigated = false;
      const watch = (frame) => { if (frame === page.mainFrame()) navigated = true; };
      page.on('framenavigated', watch);
      const started = Date.now();
      try {
        await where.getByText(argument, { exact: step.exact ?? false }).first()
          .waitFor({ state: 'visible', timeout: step.timeoutMs ?? timeoutMs });
      } finally {
        page.off('framenavigated', watch);
      }
      if (navigated) throw new StepFailed(`"${argument}" came with a page load, not a live update`);
      return { waitedMs: Date.now() - started };
    }
    case 'read': {
      const texts = await page.locator(argument).evaluateAll(
        (elements) => elements.slice(0, 500).map((element) => element.innerText.trim()),
      );
      return { texts };
    }
    case 'axe':
      return runAxe(page, argument);
    case 'viewport':
      await page.setViewportSize(argument);
      return {};
    case 'noHorizontalScroll': {
      const widths = await page.evaluate(() => ({
        scrollWidth: document.documentElement.scrollWidth,
        clientWidth: document.documentElement.clientWidth,
      }));
      if (widths.scrollWidth > widths.clientWidth) {
        throw new StepFailed(`the page scrolls sideways: ${JSON.stringify(widths)}`);
      }
      return widths;
    }
    case 'print': {
      await page.emulateMedia({ media: 'print' });
      try {
        for (const selector of argument.expectHidden ?? []) {
          if (await page.locator(selector).first().isVisible()) {
            throw new StepFailed(`${selector} is printed`);
          }
        }
        for (const text of argument.expectText ?? []) {
          await page.getByText(text).first().waitFor({ state: 'visible' });
        }
        if (argument.path?.endsWith('.pdf')) await page.pdf({ path: argument.path });
        else if (argument.path) await page.screenshot({ path: argument.path, fullPage: true });
      } finally {
        await page.emulateMedia({ media: 'screen' });
      }
      return {};
    }
    case 'screenshot':
      await page.screenshot({ path: argument, fullPage: true });
      return {};
    case 'download': {
      const responses = [];
      const collect = (response) => responses.push(response);
      page.on('response', collect);
      try {
        const [download] = await Promise.all([
          page.waitForEvent('download'),
          where.getByRole(argument.role, { name: argument.name, exact }).click(),
        ]);
        const path = argument.path ?? join(options.artifactsDir ?? profile, download.suggestedFilename());
        await download.saveAs(path);
        const answer = responses.find((response) => response.url() === download.url());
        const contentType = answer ? (await answer.allHeaders())['content-type'] : undefined;
        if (argument.expectContentType && !(contentType ?? '').startsWith(argument.expectContentType)) {
          throw new StepFailed(`the download is ${contentType}, not ${argument.expectContentType}`);
        }
        return { contentType, path, suggestedFilename: download.suggestedFilename(), bytes: readFileSync(path).length };
      } finally {
        page.off('response', collect);
      }
    }
    case 'pause':
      return pause(argument);
    default:
      throw new StepFailed(`unknown action ${action}`);
  }
}

function describe(step) {
  const action = actionOf(step);
  const argument = step[action];
  const shown = typeof argument === 'object' && argument !== null
    ? argument.name ?? argument.label ?? argument.path ?? argument.username ?? ''
    : argument === true ? '' : String(argument);
  return shown ? `${action} ${shown}` : action;
}

// --- sections ---------------------------------------------------------------------------------

let section = null; // the section running, if any
let sectionCount = 0;

function record(stepResult) {
  const entry = section ? { ...stepResult, section: section.name } : stepResult;
  steps.push(entry);
  if (section) section.steps.push(entry);
}

async function sectionScreenshot(page) {
  if (!options.artifactsDir || section.screenshot) return;
  const path = join(options.artifactsDir, `failure-${section.index}.png`);
  if (await page.screenshot({ path, fullPage: true }).then(() => true, () => false)) {
    section.screenshot = path;
  }
}

// Ends the running section: the violations and errors since it began are its own.
async function closeSection(page) {
  if (!section) return;
  // A round trip to the page first: the console messages it sent before are in by then.
  await page.evaluate(() => 0).catch(() => {});
  section.cspViolations = cspViolations.slice(section.from.csp);
  section.errors = errors.slice(section.from.errors);
  section.httpErrors = httpErrors.slice(section.from.http);
  delete section.from;
  if (section.cspViolations.length || section.errors.length) {
    section.ok = false;
    await sectionScreenshot(page);
  }
  section = null;
}

async function openSection(page, name) {
  if (name in sections) throw new StepFailed(`two sections named "${name}"`);
  if (section) await closeSection(page);
  else if (sectionCount === 0) {
    result.beforeSections = { cspViolations: [...cspViolations], errors: [...errors] };
  }
  sectionCount += 1;
  section = {
    name, index: sectionCount, ok: true, steps: [], axe: {},
    from: { csp: cspViolations.length, errors: errors.length, http: httpErrors.length },
  };
  sections[name] = section;
  result.sections = sections;
}

const profile = mkdtempSync(join(tmpdir(), 'app-chromium-'));
let context;
let page;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: options.chromium ?? '/usr/bin/chromium',
    headless: true,
    args: FLAGS,
    viewport: options.viewport ?? { width: 1280, height: 900 },
    acceptDownloads: true,
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(timeoutMs);
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (event) => {
      console.error(
        `CSP violation: ${event.violatedDirective} blocked ${event.blockedURI} at ${event.sourceFile}:${event.lineNumber}`,
      );
    });
  });
  page.on('console', (message) => {
    if (message.type() !== 'error') return;
    const text = message.text().slice(0, 500);
    if (/Content Security Policy|CSP violation/.test(text)) cspViolations.push(text);
    else if (text.startsWith('Failed to load resource')) consoleErrors.push(text);
    else if (allowed.some((pattern) => pattern.test(text))) consoleErrors.push(text);
    else errors.push(`console: ${text}`);
  });
  page.on('pageerror', (error) => errors.push(`uncaught: ${String(error.stack ?? error).slice(0, 500)}`));
  page.on('response', (answer) => {
    if (answer.status() >= 400) httpErrors.push(`${answer.status()} ${new URL(answer.url()).pathname}`);
  });

  let failed = false;
  for (const [index, step] of options.steps.entries()) {
    const started = Date.now();
    let name = `step ${index}`;
    try {
      name = describe(step);
      if (actionOf(step) === 'section') {
        await openSection(page, String(step.section));
        continue;
      }
      if (section && !section.ok) continue; // a step of this section failed: on to the next
      const extra = await perform(page, context, step);
      record({ name, ms: Date.now() - started, ...extra, url: page.url() });
    } catch (error) {
      record({ name, ms: Date.now() - started, ok: false, url: page.url() });
      const why = `step ${index} (${name}) failed: ${error instanceof StepFailed ? error.message : String(error.stack ?? error)}`;
      if (section) {
        section.ok = false;
        section.failedStep = index;
        section.error = why;
        await sectionScreenshot(page);
        continue;
      }
      result.failedStep = index;
      result.error = why;
      failed = true;
      break;
    }
  }
  await closeSection(page);
  result.ok = !failed && cspViolations.length === 0 && errors.length === 0 &&
    Object.values(sections).every((each) => each.ok);
} catch (error) {
  result.error = String(error.stack ?? error);
  if (section) {
    section.ok = false;
    section.error = `the session broke off: ${result.error}`;
    await closeSection(page).catch(() => {});
  }
} finally {
  const attributed = Object.values(sections).reduce(
    (count, each) => count + (each.cspViolations?.length ?? 0) + (each.errors?.length ?? 0), 0);
  const outside = result.error !== undefined ||
    cspViolations.length + errors.length > attributed || Object.keys(sections).length === 0;
  if (!result.ok && outside && page && options.artifactsDir) {
    const path = join(options.artifactsDir, 'failure.png');
    if (await page.screenshot({ path, fullPage: true }).then(() => true, () => false)) {
      result.screenshot = path;
    }
  }
  if (context) await context.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(result));
process.exit(0);
