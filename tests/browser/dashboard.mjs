// Drives the dashboard in Debian's chromium, headless, as an operator would:
// types the token, sees the plugins, finds the dead letter, presses Replay
// and sees the replayed event handled. Run by tests/tests/all/dashboard.rs:
//
//   node dashboard.mjs <admin URL> <token> <plugin> <screenshot.png>
//
// Exits 0 when every step was seen, else 1 with the step that failed.
import { createRequire } from "node:module";

const require = createRequire(process.env.PLAYWRIGHT_DIR + "/package.json");
const { chromium } = require("playwright-core");

const [url, token, plugin, screenshot] = process.argv.slice(2);
const STEP_MS = 30000;

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
let step = "opening the page";
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  await page.goto(url, { timeout: STEP_MS });

  step = "typing the token";
  await page.fill("#token", token);
  await page.click("#login");

  // Its fixed version was just loaded: on probation until its first call.
  step = `seeing plugin ${plugin} on probation`;
  const row = page.locator(`#plugins tr[data-plugin="${plugin}"]`);
  await row.locator("td", { hasText: "on probation" }).waitFor({ timeout: STEP_MS });
  const handled = async () => Number(await row.locator("td.handled").textContent());
  const before = await handled();

  step = "seeing the dead letter";
  const replay = page.locator("#dead button.replay").first();
  await replay.waitFor({ timeout: STEP_MS });
  if (!page.url().startsWith(url) || page.url().includes(token)) {
    throw new Error("the token must not reach the URL");
  }

  step = "replaying it with the button";
  await replay.click();

  step = `seeing the replayed event handled by ${plugin}`;
  const deadline = Date.now() + STEP_MS;
  while ((await handled()) <= before) {
    if (Date.now() > deadline) throw new Error(`handled stayed at ${before}`);
    await page.waitForTimeout(200);
  }
  step = `seeing plugin ${plugin} serving after its first call`;
  await row.locator("td", { hasText: "serving" }).waitFor({ timeout: STEP_MS });
  step = "seeing the dead letter gone";
  await page.locator("#dead", { hasText: "none" }).waitFor({ timeout: STEP_MS });
  // The chart needs two polls to draw a line.
  await page.waitForTimeout(4500);
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`ok: handled ${before} -> ${await handled()}`);
} catch (e) {
  console.error(`failed at: ${step}: ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
