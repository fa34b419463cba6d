// Opens remapd's /ui in Debian's headless chromium and reports what it shows, for
// tests/tests/netns_ui.rs. Usage: node page_check.mjs URL PEERING
// Prints one JSON line once the page shows PEERING (its drawing, texts and the
// translated-packet counter), then waits until that counter changes on the live page
// (the test sends traffic meanwhile) and prints a second line; exits non-zero with a
// message when either does not happen within 60 s. Then starts the page's live trace of
// PEERING's ICMP, prints a line once it runs, and prints the rows it shows once there
// are two (the test pings meanwhile).
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
  // The live trace of this peering's ICMP: started from the page, then (the test pings
  // meanwhile) at least the request and its reply as rows.
  await page.fill("#trace-peering", peering);
  await page.selectOption("#trace-protocol", "icmp");
  await page.click("#trace-start");
  await page.waitForFunction(
    () => document.getElementById("trace-status").textContent === "running",
    null, { timeout: 60000, polling: 100 });
  console.log(JSON.stringify({ trace: "running", problems }));
  await page.waitForFunction(
    () => document.querySelectorAll("#trace-rows tr").length >= 2,
    null, { timeout: 60000, polling: 250 });
  const rows = await page.$$eval("#trace-rows tr",
    (trs) => trs.map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent)));
  await page.click("#trace-stop");
  await page.waitForFunction(
    () => document.getElementById("trace-status").textContent === "stopped",
    null, { timeout: 10000, polling: 100 });
  console.log(JSON.stringify({ rows, problems }));
} catch (e) {
  console.error(String(e));
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);
