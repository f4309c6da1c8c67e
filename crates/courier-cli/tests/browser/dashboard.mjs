// Drives the dashboard in headless Chromium; run by crates/courier-cli/tests/dashboard.rs, which
// starts `courier dashboard` on a seeded database (see `seed` there) and passes:
// BASE_URL, TOKEN, HEAD_ID (order-1's dead head, its first event carrying a <script> payload),
// SHOTS (directory for the screenshots), RELAY_URL. It prints `relay please` once the requeued
// event shows as pending; the test then starts a relay listening at RELAY_URL, whose publishing
// this script waits to see, and whose own dashboard charts it.
import { chromium } from "playwright-core";

const { BASE_URL, TOKEN, HEAD_ID, SHOTS, RELAY_URL } = process.env;
const WAIT = { timeout: 60_000 };

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function until(condition, what) {
  const deadline = Date.now() + WAIT.timeout;
  while (!condition()) {
    check(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.setDefaultTimeout(WAIT.timeout); // a loaded machine may be slow; the waits are for conditions
  const alerts = [];
  const confirms = [];
  let answer = true; // what the "user" answers to a confirmation
  page.on("dialog", async (dialog) => {
    if (dialog.type() === "confirm") {
      confirms.push(dialog.message());
      await (answer ? dialog.accept() : dialog.dismiss());
    } else {
      alerts.push(dialog.message()); // only a script from event content would raise one
      await dialog.dismiss();
    }
  });
  const shot = (name) => page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
  const statusOf = async (id) => {
    await page.goto(`${BASE_URL}/ui/events/${id}`);
    return (await page.locator("dt:text-is('status') + dd").textContent()).trim();
  };

  // Overview.
  await page.goto(`${BASE_URL}/ui`);
  check((await page.locator("#count-dead").textContent()) === "2", "the overview shows 2 dead events");
  check((await page.locator("#count-pending").textContent()) === "3", "the overview shows 3 pending events");
  await shot("overview");

  // Events, parked.
  await page.goto(`${BASE_URL}/ui/events`);
  check((await page.locator("table.events tbody tr[data-id]").count()) === 5, "the events page lists 5 events");
  await shot("events");
  await page.goto(`${BASE_URL}/ui/parked`);
  check((await page.locator("#parked tbody tr[data-id]").count()) === 2, "2 aggregates are parked");
  await shot("parked");

  // Filter the dead events.
  await page.goto(`${BASE_URL}/ui/dead`);
  await page.fill("input[name=aggregate_id]", "order-1");
  await page.fill("input[name=error]", "buried");
  await Promise.all([page.waitForURL(/aggregate_id=order-1/), page.click("form.filters button[type=submit]")]);
  const rows = page.locator("table.events tbody tr[data-id]");
  check((await rows.count()) === 1, "the filter leaves order-1's dead head");
  check((await rows.first().getAttribute("data-id")) === HEAD_ID, "the row is order-1's head");
  await shot("dead");

  // Without the token the requeue is refused and nothing changes.
  await rows.first().locator("button[data-action=requeue]").click();
  await page.locator("#status.failed").waitFor(WAIT);
  const refusal = await page.locator("#status").textContent();
  check(refusal.includes("401"), `the refusal names 401: ${refusal}`);
  check((await statusOf(HEAD_ID)) === "dead", "a refused requeue changes nothing");

  // With the token it is requeued: pending.
  await page.goto(`${BASE_URL}/ui/dead?aggregate_id=order-1`);
  await page.fill("#token", TOKEN);
  await page.locator(`tr[data-id="${HEAD_ID}"] button[data-action=requeue]`).click();
  await page.locator("#status.ok").waitFor(WAIT); // shown once the page has reloaded
  const done = await page.locator("#status").textContent();
  check(done === "requeue: 1 event(s) changed", `the requeue reports its change: ${done}`);
  check((await page.locator("table.events tbody tr[data-id]").count()) === 0, "order-1 has no dead event left");
  check((await statusOf(HEAD_ID)) === "pending", "the requeued event is pending");

  // Releasing a parked aggregate warns about order first; declined, nothing changes.
  await page.goto(`${BASE_URL}/ui/parked`);
  answer = false;
  const asked = confirms.length;
  await page.locator("#parked button", { hasText: "Skip head" }).click();
  await until(() => confirms.length > asked, "the release to ask for confirmation");
  answer = true;
  check(confirms.at(-1).includes("in order"), `releasing warns about order: ${confirms.at(-1)}`);
  await page.reload();
  check((await page.locator("#parked tbody tr[data-id]").count()) === 1, "a declined release changes nothing");

  // The bulk discard asks, showing the count first.
  await page.goto(`${BASE_URL}/ui/dead`);
  await page.locator("p.bulk button[data-action=discard]").click();
  await page.locator("#status.ok").waitFor(WAIT);
  check((await page.locator("#status").textContent()) === "discard: 1 event(s) changed", "the discard reports its change");
  check(confirms.at(-1) === "discard 1 dead event(s)?", `the confirmation counts first: ${confirms.at(-1)}`);

  // A relay publishes the requeued event.
  console.log("relay please");
  const deadline = Date.now() + 60_000;
  while ((await statusOf(HEAD_ID)) !== "published") {
    check(Date.now() < deadline, "the requeued event was not published within a minute");
    await page.waitForTimeout(200);
  }

  // The <script> payload and header are shown as text and never run.
  await page.goto(`${BASE_URL}/ui/events/${HEAD_ID}`);
  const payload = await page.locator("#payload").textContent();
  check(payload.includes('"note": "<script>alert(1)</script>"'), `the payload shows as text: ${payload}`);
  const header = await page.locator("#headers td").first().textContent();
  check(header === "<script>alert(1)</script>", `the header shows as text: ${header}`);
  check((await page.locator("main script").count()) === 0, "no script element came from event content");
  await shot("detail");

  // The relay's own dashboard draws its charts and redraws them by itself.
  await page.goto(`${RELAY_URL}/ui`);
  await page.locator("#charts svg").first().waitFor(WAIT);
  await page.locator("#charts polyline").first().waitFor(WAIT);
  await shot("relay-overview");
  check(alerts.length === 0, `event content ran as script: ${alerts}`);
  console.log("browser checks passed");
} finally {
  await browser.close();
}
