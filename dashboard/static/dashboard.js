// The dashboard's few behaviours: copy buttons, confirmations, auto-submitting filters, and the live queue.
(function () {
  "use strict";

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) return;
    var field = document.querySelector(button.getAttribute("data-copy"));
    if (!field) return;
    var done = function () {
      var label = button.textContent;
      button.textContent = button.getAttribute("data-copied") || label;
      setTimeout(function () { button.textContent = label; }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(field.value).then(done, function () { field.select(); });
    } else {
      field.select();
      try { document.execCommand("copy"); done(); } catch (e) { /* the text stays selected */ }
    }
  });

  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) event.preventDefault();
  });

  document.querySelectorAll("[data-autosubmit]").forEach(function (select) {
    select.addEventListener("change", function () { select.form.submit(); });
  });

  var table = document.getElementById("queue");
  if (!table) return;
  var url = table.getAttribute("data-poll");
  var locale = document.body.getAttribute("data-locale") || "ru";
  var labels = JSON.parse(document.getElementById("status-labels").textContent);
  var zone = document.body.getAttribute("data-tz") || undefined;  // the clinic's, as the server renders
  var when = new Intl.DateTimeFormat(locale, { dateStyle: "short", timeStyle: "short", timeZone: zone });
  var size = function (bytes) {
    if (!bytes) return "";
    var units = ["B", "kB", "MB", "GB"], value = bytes, i = 0;
    while (value >= 1000 && i < units.length - 1) { value /= 1000; i += 1; }
    return new Intl.NumberFormat(locale, { maximumFractionDigits: i ? 1 : 0 }).format(value) + " " + units[i];
  };
  var cell = function (text, col) {
    var td = document.createElement("td");
    td.textContent = text;
    if (col) td.setAttribute("data-col", col);
    return td;
  };
  var step = function (r) {
    var text = r.step || "";
    if (r.expected) text += " " + (r.received || 0) + "/" + r.expected;
    else if (r.received) text += " " + r.received;
    return text;
  };
  var admin = table.getAttribute("data-admin") === "yes";
  var csrf = document.querySelector("meta[name=csrf-token]").getAttribute("content");
  var retryForm = function (taskId) {
    var form = document.createElement("form");
    form.method = "post"; form.action = "/dashboard/tasks/" + taskId + "/retry"; form.className = "inline";
    var token = document.createElement("input");
    token.type = "hidden"; token.name = "csrf_token"; token.value = csrf;
    var button = document.createElement("button");
    button.type = "submit"; button.textContent = table.getAttribute("data-retry");
    form.appendChild(token); form.appendChild(button);
    return form;
  };
  var render = function (rows) {
    var body = document.createElement("tbody");
    rows.forEach(function (r) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-task", r.task_id);
      tr.setAttribute("data-status", r.status);
      tr.className = "status-" + r.status.toLowerCase();
      var id = document.createElement("td"), a = document.createElement("a");
      a.href = "/dashboard/tasks/" + r.task_id; a.className = "mono"; a.textContent = r.task_id.slice(0, 8);
      id.appendChild(a); tr.appendChild(id);
      tr.appendChild(cell(r.pid || "—"));
      tr.appendChild(cell(r.acsn || "—"));
      var status = cell(labels[r.status] || r.status, "status"); status.className = "status"; tr.appendChild(status);
      tr.appendChild(cell(step(r), "step"));
      tr.appendChild(cell(size(r.size), "size"));
      tr.appendChild(cell(when.format(new Date(r.created_at))));
      var reason = cell(r.reason || "", "reason"); reason.className = "reason"; tr.appendChild(reason);
      var run = document.createElement("td");
      run.className = "row-actions";
      if (r.run_url) {
        var link = document.createElement("a");
        link.href = r.run_url; link.target = "_blank"; link.rel = "noopener"; link.textContent = "Prefect";
        run.appendChild(link);
      }
      if (admin && r.can_retry) run.appendChild(retryForm(r.task_id));
      tr.appendChild(run);
      body.appendChild(tr);
    });
    if (!rows.length) {
      var empty = document.createElement("tr"); empty.className = "empty";
      var td = cell(table.getAttribute("data-empty") || ""); td.colSpan = 9; empty.appendChild(td); body.appendChild(empty);
    }
    table.replaceChild(body, table.tBodies[0]);
  };
  var poll = function () {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (response.status === 401) { window.location.reload(); return null; }
        return response.ok ? response.json() : null;
      })
      .then(function (data) { if (data) render(data.rows); })
      .catch(function () { /* the next poll tries again */ })
      .finally(function () { setTimeout(poll, 3000); });
  };
  setTimeout(poll, 3000);
})();
