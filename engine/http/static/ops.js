// The ops dashboard's only script: the live feed (server-sent events), and a confirmation before
// a form that asks for one. Rows are built with textContent: no data is ever parsed as HTML.
"use strict";

(function () {
  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });

  var table = document.getElementById("feed");
  if (!table || !window.EventSource) return;
  var body = table.tBodies[0];
  var state = document.getElementById("feed-state");
  var shown = {};
  var MAX_ROWS = 500;

  function setState(value) {
    table.setAttribute("data-state", value);
    if (state) state.textContent = value;
  }

  function cell(row, text, className) {
    var td = row.insertCell(-1);
    td.textContent = text == null ? "" : String(text);
    if (className) td.className = className;
    return td;
  }

  function leadCell(row, address) {
    var td = row.insertCell(-1);
    var a = document.createElement("a");
    a.href = "/ops/leads?q=" + encodeURIComponent(address);
    a.textContent = address;
    td.appendChild(a);
  }

  function add(kind, item, what, why) {
    // A reconnect may replay the batch it broke off in: show each row once.
    var key = kind + ":" + item.id + ":" + (item.status || "");
    if (shown[key]) return;
    shown[key] = true;
    var row = body.insertRow(0);
    row.className = kind + " fresh";
    row.setAttribute("data-kind", kind);
    row.setAttribute("data-lead", item.lead);
    cell(row, item.at.replace("T", " ").replace("Z", "").slice(0, 19));
    leadCell(row, item.lead);
    cell(row, item.funnel);
    cell(row, what, "what");
    cell(row, why);
    while (body.rows.length > MAX_ROWS) body.deleteRow(-1);
  }

  var source = new EventSource(table.getAttribute("data-stream"));
  source.addEventListener("ready", function () { setState("live"); });
  source.addEventListener("transition", function (event) {
    var t = JSON.parse(event.data);
    var why = t.cause + (t.event ? " " + t.event : t.ref ? " " + t.ref : "") + (t.exit_reason ? " (" + t.exit_reason + ")" : "");
    add("transition", t, (t.from || "(outside)") + " \u2192 " + (t.to || "(exit)"), why);
  });
  source.addEventListener("email", function (event) {
    var e = JSON.parse(event.data);
    add("email", e, "email " + e.step + ": " + e.status, e.detail || e.template);
  });
  source.onerror = function () {
    // EventSource reconnects by itself (resuming with Last-Event-ID) unless the server refused it.
    setState(source.readyState === EventSource.CLOSED ? "stopped: reload the page (signed out?)" : "reconnecting");
  };
})();
