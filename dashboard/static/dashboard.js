// The dashboard's few behaviours: copy buttons, confirmations, auto-submitting filters, panels that stay open on
// a wide screen, and the live queue (its rows come rendered from the server, in the page's language).
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

  // Folding panels (the menu, filters) are always open on a wide screen. The stylesheet does it where the
  // browser can style a panel's content (::details-content); elsewhere this opens them.
  var wide = window.matchMedia("(min-width: 601px)");
  var styled = window.CSS && CSS.supports && CSS.supports("selector(::details-content)");
  var unfold = function () {
    if (styled || !wide.matches) return;
    document.querySelectorAll("details.fold").forEach(function (panel) { panel.open = true; });
  };
  unfold();
  if (wide.addEventListener) wide.addEventListener("change", unfold);

  var table = document.getElementById("queue");
  if (!table) return;
  var url = table.getAttribute("data-poll");
  var poll = function () {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (response.status === 401) { window.location.reload(); return null; }
        return response.ok ? response.json() : null;
      })
      .then(function (data) { if (data) table.tBodies[0].innerHTML = data.html; })
      .catch(function () { /* the next poll tries again */ })
      .finally(function () { setTimeout(poll, 3000); });
  };
  setTimeout(poll, 3000);
})();
