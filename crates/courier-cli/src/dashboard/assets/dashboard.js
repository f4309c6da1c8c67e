// Courier dashboard: sends the actions to /api/v1 with the admin token as a bearer header (kept in
// this tab's sessionStorage, never in a cookie) and refreshes the overview's charts.
"use strict";

const TOKEN_KEY = "courier-admin-token";
const DONE_KEY = "courier-last-action";

function show(message, ok) {
  const status = document.getElementById("status");
  status.textContent = message; // text, never markup
  status.className = ok ? "ok" : "failed";
}

async function post(action, query) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch("/api/v1/dead/" + action + "?" + query, { method: "POST", headers, credentials: "omit" });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(response.status + ": " + (body.error || response.statusText));
  return body;
}

async function act(button) {
  const action = button.dataset.action;
  const query = button.dataset.query;
  try {
    if (button.dataset.bulk) {
      const counted = await post(action, query + (query ? "&" : "") + "dry_run=true");
      if (!confirm(action + " " + counted.matched + " dead event(s)?")) return;
    } else if (button.dataset.warn && !confirm(button.dataset.warn)) {
      return;
    }
    const done = await post(action, query);
    // Reloaded at once to show the rows as they are now; the result is shown after the reload.
    sessionStorage.setItem(DONE_KEY, action + ": " + done.changed + " event(s) changed");
    location.reload();
  } catch (error) {
    show(action + " refused: " + error.message, false);
  }
}

function refreshCharts(charts) {
  setInterval(async () => {
    try {
      const response = await fetch(charts.dataset.refresh, { credentials: "omit" });
      if (response.ok) charts.innerHTML = await response.text(); // SVG drawn and escaped by the server
    } catch (_) {
      // the next tick tries again
    }
  }, 2000);
}

document.addEventListener("DOMContentLoaded", () => {
  const done = sessionStorage.getItem(DONE_KEY);
  if (done) {
    sessionStorage.removeItem(DONE_KEY);
    show(done, true);
  }
  const token = document.getElementById("token");
  token.value = sessionStorage.getItem(TOKEN_KEY) || "";
  token.addEventListener("input", () => sessionStorage.setItem(TOKEN_KEY, token.value));
  for (const button of document.querySelectorAll("button.action")) {
    button.addEventListener("click", () => act(button));
  }
  const charts = document.getElementById("charts");
  if (charts) refreshCharts(charts);
});
