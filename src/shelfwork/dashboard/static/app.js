// The shelfwork dashboard's only script: live updates without reloading the page, local times,
// and the submit form's parameter hints. Hand-written, no dependencies, no build step.
//
// An element with data-live-src is fetched again every few seconds (body data-refresh-ms) and its
// content replaced when the server's HTML changed. With data-live-rows (a <tbody>), only the rows
// that changed are replaced, so a row being clicked stays put. A fragment that contains
// [data-live-done] (a finished job) is the last one fetched.
(function () {
  "use strict";

  var every = Number(document.body.dataset.refreshMs) || 2000;
  var lang = document.documentElement.lang || "en";
  var timeFormat = new Intl.DateTimeFormat(lang === "uk" ? "uk-UA" : "en-GB", {
    year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  });

  // <time datetime="...Z">2024-05-01 12:00:00 UTC</time> -> the reader's own clock.
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var moment = new Date(el.getAttribute("datetime"));
      if (!isNaN(moment.getTime())) {
        el.title = el.textContent;
        el.textContent = timeFormat.format(moment);
      }
    });
  }

  function fromHtml(html) {
    var template = document.createElement("template");
    template.innerHTML = html;
    return template.content;
  }

  // Replace only the rows whose server HTML changed since the last fetch, keep the order given.
  function updateRows(tbody, html, previous) {
    var seen = {};
    var fresh = Array.prototype.slice.call(fromHtml(html).children);
    fresh.forEach(function (row, index) {
      var source = row.outerHTML;
      var current = row.id ? document.getElementById(row.id) : null;
      var keep = current && current.parentNode === tbody && previous[row.id] === source;
      var node = keep ? current : row;
      if (!keep) {
        localTimes(row);
        if (current && current.parentNode === tbody) tbody.removeChild(current);
      }
      if (tbody.children[index] !== node) tbody.insertBefore(node, tbody.children[index] || null);
      seen[row.id] = source;
    });
    while (tbody.children.length > fresh.length) tbody.removeChild(tbody.lastElementChild);
    return seen;
  }

  // The job page's buttons live outside the refreshed part: show those the job now allows.
  function updateActions(root) {
    var live = root.querySelector("[data-actions]");
    if (!live) return;
    var allowed = live.dataset.actions.split(" ");
    document.querySelectorAll("form[data-action]").forEach(function (form) {
      form.hidden = allowed.indexOf(form.dataset.action) < 0;
    });
  }

  function sessionEnded() {
    if (document.getElementById("session-ended")) return;
    var note = document.createElement("p");
    note.id = "session-ended";
    note.className = "problem";
    note.setAttribute("role", "alert");
    note.textContent = document.body.dataset.sessionEnded;
    document.getElementById("main").prepend(note);
  }

  function follow(el) {
    var rows = el.hasAttribute("data-live-rows");
    var lastHtml = null;
    var lastRows = {};
    if (rows) {
      Array.prototype.forEach.call(el.children, function (row) { lastRows[row.id] = null; });
    }

    function later(ms) { window.setTimeout(tick, ms || every); }

    function tick() {
      if (document.hidden) return later();
      fetch(el.dataset.liveSrc, { headers: { Accept: "text/html" }, cache: "no-store" })
        .then(function (response) {
          if (response.status === 401) { sessionEnded(); return null; }
          if (!response.ok) { later(every * 3); return null; }
          return response.text();
        })
        .then(function (html) {
          if (html === null) return;
          if (html !== lastHtml) {
            lastHtml = html;
            if (rows) {
              lastRows = updateRows(el, html, lastRows);
            } else {
              el.replaceChildren(fromHtml(html));
              localTimes(el);
              updateActions(el);
            }
          }
          if (!el.querySelector("[data-live-done]")) later();
        })
        .catch(function () { later(every * 3); }); // the server is away: look again later
    }

    if (!el.querySelector("[data-live-done]")) later();
  }

  // The submit form: show the chosen pipeline's parameters and start from its defaults.
  function submitForm() {
    var select = document.getElementById("submit-pipeline");
    var params = document.getElementById("submit-params");
    if (!select || !params) return;
    var example = function () { return select.selectedOptions[0].dataset.example || "{}"; };
    var shown = example();
    select.addEventListener("change", function () {
      document.querySelectorAll(".schema[data-pipeline]").forEach(function (el) {
        el.hidden = el.dataset.pipeline !== select.value;
      });
      if (params.value.trim() === "" || params.value === shown) params.value = example();
      shown = example();
    });
  }

  localTimes(document);
  document.querySelectorAll("[data-live-src]").forEach(follow);
  submitForm();
})();
