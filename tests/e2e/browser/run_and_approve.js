// Drives the Prefect UI as a person does, with Debian's Chromium (playwright-core, no browser
// download): the deployment's run form, Submit, the flow run's page, Resume, the plan in the
// dialog, "approve" with a note, Resume, and the run continuing to Completed.
//
// Usage: node run_and_approve.js '<json>' with
//   {"url": server URL, "deployment": name shown in the list, "inventory": path,
//    "options": {"watch": n, "gate_deadline": n, "gate_consecutive": n}, "note": text,
//    "artifacts": dir for screenshots, "profile": fresh user-data dir, "timeout_s": per wait}
// Prints one JSON object per line ({"event": ...}); exits non-zero on failure (with a
// screenshot "failure.png" in the artifacts dir).
//
// Elements are found by role and label (regular expressions on the words a person reads), never
// by CSS classes or the exact text of the approval's markdown, which changes with the plan.
'use strict';
const path = require('path');
const { chromium } = require('playwright-core');

const cfg = JSON.parse(process.argv[2]);
const WAIT_MS = (cfg.timeout_s || 400) * 1000;
const shot = (name) => path.join(cfg.artifacts, name);
const say = (event, extra) => console.log(JSON.stringify(Object.assign({ event, t: Date.now() / 1000 }, extra || {})));

const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

// The run's state badge in the page header (the UI polls the API; a reload every 30 s covers
// a missed refresh, as a person pressing F5 would).
async function waitForState(page, name, ms) {
  const deadline = Date.now() + ms;
  const badge = page.getByText(name, { exact: true }).first();
  while (Date.now() < deadline) {
    try {
      await badge.waitFor({ state: 'visible', timeout: Math.min(30000, Math.max(1000, deadline - Date.now())) });
      return;
    } catch (e) {
      if (Date.now() >= deadline) break;
      await page.reload();
    }
  }
  throw new Error(`the run never showed "${name}" within ${ms / 1000} s`);
}

// A number field of the form, by the words of its label (e.g. /^watch/i for "Watch S" or
// "Watch (seconds)").
async function fillNumber(page, label, value) {
  const field = page.getByLabel(label).first();
  await field.scrollIntoViewIfNeeded();
  await field.fill(String(value));
}

async function main() {
  const ctx = await chromium.launchPersistentContext(cfg.profile, {
    executablePath: cfg.chromium || '/usr/bin/chromium', headless: true, args: FLAGS,
    viewport: { width: 1400, height: 1000 },
  });
  const page = ctx.pages()[0] || await ctx.newPage();
  page.setDefaultTimeout(60000);
  try {
    // 1. the deployment's run form, from the deployments list, as a person gets there
    await page.goto(cfg.url + '/', { waitUntil: 'domcontentloaded' });
    await page.getByRole('link', { name: /^deployments$/i }).first().click();
    await page.getByRole('link', { name: cfg.deployment, exact: true }).click();
    await page.getByRole('button', { name: /^run/i }).first().click();
    await page.getByRole('menuitem', { name: /custom run/i }).click();
    // "Inventory" is a path or a GarageCluster block: the form shows a type switch (str is the
    // default) and a text box under the field's title, so take the box of the innermost block
    // that holds both the title and a text box
    const inventory = page.locator('div', { has: page.getByText(/^Inventory$/) })
      .filter({ has: page.locator('textarea') }).last().locator('textarea').first();
    await inventory.fill(cfg.inventory);
    const o = cfg.options || {};
    if (o.gate_deadline !== undefined) await fillNumber(page, /^sync gate deadline/i, o.gate_deadline);
    if (o.gate_consecutive !== undefined) await fillNumber(page, /^clean observations needed/i, o.gate_consecutive);
    if (o.watch !== undefined) await fillNumber(page, /^watch window/i, o.watch);
    await page.setViewportSize({ width: 1400, height: 2600 });
    await inventory.scrollIntoViewIfNeeded();
    await page.screenshot({ path: shot('1-run-form.png') });
    await page.setViewportSize({ width: 1400, height: 1000 });
    say('form-filled', { screenshot: shot('1-run-form.png') });
    await page.getByRole('button', { name: /^submit$/i }).click();

    // 2. the new run's page, from the confirmation's "View run"
    await page.getByRole('button', { name: /view run/i }).first().click();
    await page.waitForURL(/\/runs\/flow-run\/[0-9a-f-]{36}/);
    const flowRunId = page.url().match(/flow-run\/([0-9a-f-]{36})/)[1];
    say('submitted', { flow_run_id: flowRunId, url: page.url() });
    await waitForState(page, 'Paused', WAIT_MS);
    say('paused');

    // 3. Resume: a button on the page, or in the run's menu
    let resume = page.getByRole('button', { name: /^resume$/i });
    if (await resume.count() === 0) {
      await page.getByRole('button', { name: /open menu/i }).first().click();
      resume = page.getByRole('menuitem', { name: /^resume$/i });
    }
    await resume.first().click();
    const dialog = page.getByRole('dialog');
    await dialog.waitFor();
    const decision = dialog.getByLabel(/decision|action/i).first();
    await decision.waitFor();
    // the form's fields come before its description (fetched and rendered after): wait for the
    // description's own heading, or the text read is the form without the plan
    await dialog.getByText(/what comes next/i).first().waitFor();
    const text = await dialog.innerText();
    await page.setViewportSize({ width: 1400, height: 1600 });
    await page.screenshot({ path: shot('2-resume-dialog.png') });
    say('dialog', { text, screenshot: shot('2-resume-dialog.png') });

    // 4. approve, with a note, and Resume
    await decision.scrollIntoViewIfNeeded();
    await decision.click();
    const choices = await page.getByRole('option').allInnerTexts();
    say('choices', { choices });
    await page.getByRole('option', { name: /^approve$/i }).click();
    const note = dialog.getByLabel(/^note/i).first();
    await note.fill(cfg.note);
    await page.screenshot({ path: shot('3-resume-dialog-approved.png') });
    await dialog.getByRole('button', { name: /^resume$/i }).click();
    await dialog.waitFor({ state: 'hidden' });
    await page.setViewportSize({ width: 1400, height: 1000 });
    say('resumed');

    // 5. the run goes on to Completed
    await waitForState(page, 'Completed', WAIT_MS);
    await page.screenshot({ path: shot('4-run-completed.png') });
    say('completed', { screenshot: shot('4-run-completed.png') });
  } catch (e) {
    await page.screenshot({ path: shot('failure.png') }).catch(() => {});
    say('error', { message: String(e && e.stack || e), url: page.url() });
    process.exitCode = 1;
  } finally {
    await ctx.close();
  }
}

main().catch((e) => { say('error', { message: String(e && e.stack || e) }); process.exit(1); });
