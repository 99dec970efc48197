// Votes once in the feedback app with headless Debian Chromium on a phone-sized viewport.
// Usage: node vote.mjs URL SCREENSHOT_DIR EDITED_TEXT  -> prints {"pair": ID, "vote": ID} on stdout.
import { chromium } from "playwright-core";

const [url, shotDir, edited] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-background-networking", "--disable-gpu", "--headless"],
});
try {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const page = await context.newPage();
  await page.goto(url);
  await page.waitForFunction(() =>
    document.getElementById("a-text").textContent && document.getElementById("b-text").textContent
    && !document.getElementById("vote-a").disabled, null, { timeout: 30000 });
  const pair = await page.evaluate(() => document.body.dataset.pair);
  await page.fill("#edit", edited);
  await page.screenshot({ path: `${shotDir}/feedback-phone.png`, fullPage: true });
  await page.tap("#vote-a");
  await page.waitForFunction((p) => document.body.dataset.lastVote && document.body.dataset.pair
    && document.body.dataset.pair !== p && !document.getElementById("vote-a").disabled, pair, { timeout: 30000 });
  await page.screenshot({ path: `${shotDir}/feedback-phone-voted.png`, fullPage: true });
  const vote = await page.evaluate(() => document.body.dataset.lastVote);
  console.log(JSON.stringify({ pair: Number(pair), vote: Number(vote) }));
} finally {
  await browser.close();
}
