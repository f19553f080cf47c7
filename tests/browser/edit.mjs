// The page of `movq serve` in a real browser: choose an image, paint a mask with the brush,
// erase part of it, pick a class and the number of samples, press Edit, and check that the
// completions arrive with every token outside the painted region kept from the input's
// encoding (the stage-1 reconstruction's), and can be downloaded; then outpaint. Run by scripts/browser-test, which trains the tiny
// runs it needs; usage: node edit.mjs MOVQ_BINARY STAGE2_RUN INPUT_PNG [SCREENSHOT_PNG]
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const [movq, run, input, screenshot] = process.argv.slice(2);
const fail = (msg) => { console.error(`browser test: ${msg}`); process.exit(1); };

const server = spawn(movq, ["serve", "--model", run, "--port", "0", "--device", "cpu"]);
const port = await new Promise((resolve, reject) => {
  let seen = "";
  server.stderr.on("data", (d) => {
    seen += d;
    const m = seen.match(/127\.0\.0\.1:(\d+)/);
    if (m) resolve(m[1]);
  });
  server.on("exit", (code) => reject(new Error(`movq serve exited (${code}): ${seen}`)));
});

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`http://127.0.0.1:${port}/`);
  // the classes come from /api/info
  await page.waitForFunction(() => document.querySelectorAll("#class option").length > 1);
  const classes = await page.$$eval("#class option", (os) => os.map((o) => o.value));
  if (!classes.includes("circle-red")) fail(`classes: ${classes}`);
  if (!(await page.isDisabled("#edit"))) fail("Edit is enabled before an image is chosen");
  // one of the run's validation images can be chosen too
  await page.waitForFunction(() => document.querySelectorAll("#examples img").length > 0);
  await page.click("#examples img");
  await page.waitForFunction(() => !document.getElementById("edit").disabled);
  const side = await page.$eval("#image", (c) => c.width);
  if (side < 8) fail(`the example image is ${side} px wide`);

  await page.setInputFiles("#file", input);
  const inputWidth = readFileSync(input).readUInt32BE(16); // the PNG's IHDR width
  await page.waitForFunction((w) => document.getElementById("image").width === w, inputWidth);
  // paint a stroke across the middle with a large brush, then erase its right end
  const box = await page.locator("#paint").boundingBox();
  const at = (fx, fy) => [box.x + box.width * fx, box.y + box.height * fy];
  await page.locator("#brush").fill("60");
  await page.mouse.move(...at(0.2, 0.5));
  await page.mouse.down();
  await page.mouse.move(...at(0.5, 0.5), { steps: 8 });
  await page.mouse.move(...at(0.8, 0.5), { steps: 8 });
  await page.mouse.up();
  const painted = () => page.$eval("#paint", (c) => {
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
    return n;
  });
  const afterPaint = await painted();
  if (afterPaint === 0) fail("the brush painted nothing");
  await page.check("input[name=tool][value=erase]");
  await page.mouse.move(...at(0.8, 0.5));
  await page.mouse.down();
  await page.mouse.up();
  const afterErase = await painted();
  if (!(afterErase < afterPaint)) fail(`erasing left ${afterErase} of ${afterPaint} pixels`);

  await page.selectOption("#class", "circle-red");
  await page.fill("#samples", "2");
  await page.fill("#seed", "7");
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith("/api/edit"), { timeout: 120000 }),
    page.click("#edit"),
  ]);
  const result = await response.json();
  await page.waitForFunction(() => document.querySelectorAll("#results img").length === 3,
                             null, { timeout: 120000 });
  // outside the painted region the tokens are the input's own: the stage-1 reconstruction
  if (!(result.metrics.masked_tokens_per_channel > 0)) fail("no token was masked");
  for (const s of result.metrics.samples) {
    if (s.known_tokens_kept !== true) fail(`completion ${s.file} changed a known token`);
  }
  const status = await page.textContent("#status");
  if (!status.includes("2 completions")) fail(`status: ${status}`);
  const sources = await page.$$eval("#results a", (as) => as.map((a) => [a.href.slice(0, 22), a.download]));
  for (const [href, name] of sources) {
    if (href !== "data:image/png;base64,") fail(`a result is not a PNG: ${href}`);
    if (!name.endsWith(".png")) fail(`download name ${name}`);
  }
  // a download of the first completion is a PNG file
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    page.click("#results figure:nth-child(2) a"),
  ]);
  const bytes = readFileSync(await download.path());
  if (bytes.subarray(1, 4).toString() !== "PNG") fail("the download is not a PNG");
  // outpainting from the same page: the margins replace the mask
  await page.fill("#right", "16");
  await page.click("#edit");
  await page.waitForFunction(() => document.getElementById("status").textContent.includes("completions")
                             && !document.getElementById("edit").disabled, null, { timeout: 120000 });
  const wide = await page.$eval("#results figure:nth-child(2) img", (i) => [i.naturalWidth, i.naturalHeight]);
  if (!(wide[0] > wide[1])) fail(`outpainted image ${wide}`);
  if (errors.length) fail(`page errors: ${errors.join("; ")}`);
  if (screenshot) await page.screenshot({ path: screenshot });
  console.log(`browser test: painted ${afterPaint} px, erased to ${afterErase}, 2 completions, download, outpainting ${wide.join("×")}: ok`);
} finally {
  await browser.close();
  server.kill();
}
