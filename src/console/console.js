// Ferry console: the few things a page cannot do without a script. Every page works without
// it. Nothing here writes HTML from data: text goes in through textContent.
"use strict";

function liveTail() {
  const section = document.getElementById("tail");
  if (!section || !window.EventSource) return;
  const rows = document.getElementById("tail-rows");
  const state = document.getElementById("tail-state");
  const source = new EventSource(section.dataset.source);
  source.addEventListener("open", () => {
    state.textContent = "Live: events appear here as they are accepted.";
    section.classList.add("live");
  });
  source.addEventListener("error", () => {
    state.textContent = "The live tail is disconnected; it reconnects by itself.";
    section.classList.remove("live");
  });
  source.addEventListener("accepted", (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch (_) { return; }
    const row = document.createElement("tr");
    row.className = "fresh";
    const cell = (text) => {
      const td = document.createElement("td");
      td.textContent = text;
      row.appendChild(td);
      return td;
    };
    cell(event.received_at);
    cell(event.source);
    cell(event.event_type);
    cell(String(event.deliveries)).className = "num";
    const link = document.createElement("a");
    link.href = "/events/" + encodeURIComponent(event.id);
    link.textContent = event.id;
    cell("").appendChild(link);
    rows.insertBefore(row, rows.firstChild);
    while (rows.children.length > 50) rows.removeChild(rows.lastChild);
  });
  source.addEventListener("skipped", (message) => {
    state.textContent = "Live, but " + message.data + " events went by too fast to show.";
  });
}

// A jq field (`data-jq`) is compiled as it is typed: its error, with where it is, shows below.
function jqChecks() {
  const csrf = document.querySelector('meta[name="ferry-csrf"]');
  if (!csrf) return;
  for (const field of document.querySelectorAll("[data-jq]")) {
    const note = document.createElement("p");
    note.className = "jq-note";
    note.setAttribute("aria-live", "polite");
    field.insertAdjacentElement("afterend", note);
    let timer = null;
    let asked = 0;
    const check = async () => {
      const code = field.value;
      if (!code.trim()) { note.textContent = ""; field.removeAttribute("aria-invalid"); return; }
      const mine = ++asked;
      const body = new URLSearchParams({ csrf: csrf.content, expression: code });
      let answer;
      try {
        const response = await fetch("/console/check-jq", { method: "POST", body, credentials: "same-origin" });
        answer = await response.json();
      } catch (_) { return; }
      if (mine !== asked) return;
      if (answer.valid) {
        note.textContent = "jq: compiles";
        note.className = "jq-note ok";
        field.removeAttribute("aria-invalid");
      } else {
        note.textContent = "jq: " + answer.error;
        note.className = "jq-note bad";
        field.setAttribute("aria-invalid", "true");
      }
    };
    field.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(check, 250); });
    if (field.value.trim()) check();
  }
}

// A checkbox with `data-select-all="NAME"` ticks every checkbox named NAME.
function selectAll() {
  for (const all of document.querySelectorAll("[data-select-all]")) {
    all.addEventListener("change", () => {
      for (const box of document.querySelectorAll('input[type="checkbox"][name="' + all.dataset.selectAll + '"]')) {
        box.checked = all.checked;
      }
    });
  }
}

document.addEventListener("DOMContentLoaded", () => { liveTail(); jqChecks(); selectAll(); });
