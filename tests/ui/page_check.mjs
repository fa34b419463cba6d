// Opens remapd's /ui in Debian's headless chromium and reports what it shows, for
// tests/tests/netns_ui.rs. Usage: node page_check.mjs URL PEERING
// Prints one JSON line once the page shows PEERING (its drawing, texts and the
// translated-packet counter), then waits until that counter changes on the live page
// (the test sends traffic meanwhile) and prints a second line; exits non-zero with a
// message when either does not happen within 60 s.
import { chromium } from "playwright-core";

const [url, peering] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let code = 0;
try {
  const page = await browser.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push("page error: " + e.message));
  page.on("console", (m) => { if (m.type() === "error") problems.push("console: " + m.text()); });
  page.on("response", (r) => { if (r.status() >= 400) problems.push(r.status() + " " + r.url()); });
  await page.goto(url);
  const counter = page.locator(`#packets-${peering}`);
  await counter.waitFor({ timeout: 60000 });
  const section = page.locator(`[data-peering="${peering}"]`);
  const first = {
    packets: Number(await counter.textContent()),
    text: await section.innerText(),
    svg_texts: await section.locator("svg text").allTextContents(),
    cluster: await page.locator("#cluster-name").textContent(),
    ready: await page.locator("#ready").textContent(),
    error: await page.locator("#error").textContent(),
    problems,
  };
  console.log(JSON.stringify(first));
  await page.waitForFunction(
    ([id, before]) => Number(document.getElementById(id)?.textContent) > before,
    [`packets-${peering}`, first.packets],
    { timeout: 60000, polling: 250 },
  );
  console.log(JSON.stringify({ packets: Number(await counter.textContent()), problems }));
} catch (e) {
  console.error(String(e));
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);
