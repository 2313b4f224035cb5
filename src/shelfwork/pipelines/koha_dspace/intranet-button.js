/* shelfwork: an "Integrate to repository" button for Koha's record detail page.
 *
 * Paste this into Koha's IntranetUserJS system preference (Administration > System preferences >
 * Staff interface > IntranetUserJS), or print it filled in with
 *     shelfwork koha-button --url https://shelfwork.library.example --token-file koha.token
 * and set the two values below:
 *   SHELFWORK_URL    where shelfwork serves its API; add Koha's staff origin to [api] cors_origins
 *   SHELFWORK_TOKEN  a token of its own for this button: shelfwork token create --role integrator
 *                    --name koha-staff (every staff browser can read it; that role may only start
 *                    integrations and read their status; revoke it if it leaks)
 *
 * The button asks shelfwork to integrate the record (POST /integrate), then polls
 * GET /status/{task_id}?biblionumber=N every 2 seconds, showing progress, and at the end the
 * repository and cover links, the warnings, or the error. It needs no library: plain DOM, no jQuery.
 */
(function () {
  "use strict";
  var SHELFWORK_URL = "__SHELFWORK_URL__";
  var SHELFWORK_TOKEN = "__SHELFWORK_TOKEN__";
  var POLL_MS = 2000;
  var MAX_POLL_FAILURES = 3;
  var FINAL = { done: true, error: true, cancelled: true, attention: true };

  if (!/\/catalogue\/detail\.pl$/.test(window.location.pathname)) return;
  var biblionumber = new URLSearchParams(window.location.search).get("biblionumber");
  // Right after the staff login Koha answers the record page to a POST to detail.pl, with no
  // query string (C4::Auth redirects after login only on the OPAC): read the page instead.
  if (!biblionumber && /^[0-9]+$/.test(String(window.biblionumber))) {
    biblionumber = String(window.biblionumber); // Koha's catalog-strings.inc sets it
  }
  if (!biblionumber) {
    var detail = document.querySelector("#catalogue_detail_biblio[data-biblionumber]");
    biblionumber = detail ? detail.getAttribute("data-biblionumber") : null;
  }
  if (!biblionumber || !/^[0-9]+$/.test(biblionumber)) return;
  var base = SHELFWORK_URL.replace(/\/+$/, "");

  function element(tag, attributes, text) {
    var node = document.createElement(tag);
    Object.keys(attributes || {}).forEach(function (name) {
      node.setAttribute(name, attributes[name]);
    });
    if (text) node.textContent = text; // never innerHTML: answers are shown as text
    return node;
  }

  function safeLink(label, url) {
    if (!/^https?:\/\//i.test(url || "")) return element("span", {}, label + ": " + url);
    var row = element("div", { "class": "shelfwork-link" }, label + ": ");
    row.appendChild(element("a", { href: url, target: "_blank", rel: "noopener" }, url));
    return row;
  }

  function call(method, path, body) {
    return window
      .fetch(base + path, {
        method: method,
        mode: "cors",
        credentials: "omit",
        headers: {
          Authorization: "Bearer " + SHELFWORK_TOKEN,
          "Content-Type": "application/json",
          Accept: "application/json",
        },
        body: body ? JSON.stringify(body) : undefined,
      })
      .then(
        function (response) {
          return response.text().then(function (text) {
            var data = null;
            try {
              data = text ? JSON.parse(text) : null;
            } catch (ignored) {
              data = null;
            }
            if (!response.ok) {
              var detail = (data && (data.detail || data.error)) || text || response.statusText;
              var wait = response.headers.get("Retry-After");
              throw new Error(
                "shelfwork answered " + response.status + ": " + detail +
                  (wait ? " (try again in " + wait + " s)" : "")
              );
            }
            return data;
          });
        },
        function () {
          throw new Error("shelfwork at " + base + " cannot be reached");
        }
      );
  }

  function start() {
    var toolbar = document.getElementById("toolbar") || document.body;
    var group = element("div", { "class": "btn-group", id: "shelfwork-integrate" });
    var button = element(
      "button",
      { type: "button", "class": "btn btn-default", id: "shelfwork-integrate-button" },
      "Integrate to repository"
    );
    var panel = element("div", {
      id: "shelfwork-integrate-status",
      role: "status",
      "aria-live": "polite",
      style: "margin: .5em 0; padding: .5em; border-left: 4px solid #999; display: none",
    });
    group.appendChild(button);
    toolbar.appendChild(group);
    toolbar.parentNode.insertBefore(panel, toolbar.nextSibling);

    function show(lines, colour) {
      panel.style.display = "block";
      panel.style.borderLeftColor = colour || "#999";
      while (panel.firstChild) panel.removeChild(panel.firstChild);
      lines.forEach(function (line) {
        panel.appendChild(typeof line === "string" ? element("div", {}, line) : line);
      });
    }

    function describe(status) {
      var p = status.progress || {};
      var percent = p.percent === null || p.percent === undefined ? "" : " " + p.percent + "%";
      return "Task " + status.task_id + ": " + status.status + percent + (p.message ? " - " + p.message : "");
    }

    function finish(status) {
      button.disabled = false;
      var lines = [describe(status)];
      if (status.handle_url) lines.push(safeLink("Repository", status.handle_url));
      if (status.in_review) lines.push("The item awaits review in the repository; its link follows.");
      if (status.cover_url) lines.push(safeLink("Cover", status.cover_url));
      (status.warnings || []).forEach(function (w) {
        lines.push("Warning: " + w);
      });
      if (status.error) lines.push("Error: " + status.error);
      show(lines, status.status === "done" ? (status.warnings.length ? "#c90" : "#2a2") : "#c22");
    }

    function poll(taskId, failures) {
      // The button's token reads a task together with its record (task ids are sequential).
      var path = "/status/" + encodeURIComponent(taskId) + "?biblionumber=" + biblionumber;
      call("GET", path).then(
        function (status) {
          if (FINAL[status.status]) return finish(status);
          show([describe(status)], "#36c");
          window.setTimeout(function () {
            poll(taskId, 0);
          }, POLL_MS);
        },
        function (error) {
          // A blip (a restart, a proxy timeout) is not the end: the job goes on regardless.
          if (failures + 1 < MAX_POLL_FAILURES) {
            window.setTimeout(function () {
              poll(taskId, failures + 1);
            }, POLL_MS);
            return;
          }
          button.disabled = false;
          show(["Could not read task " + taskId + ": " + error.message], "#c22");
        }
      );
    }

    button.addEventListener("click", function () {
      button.disabled = true;
      show(["Sending record " + biblionumber + " to shelfwork..."], "#36c");
      call("POST", "/integrate", { biblionumber: Number(biblionumber) }).then(
        function (answer) {
          show(["Task " + answer.task_id + " queued" + (answer.created ? "" : " (already running)")], "#36c");
          poll(answer.task_id, 0);
        },
        function (error) {
          button.disabled = false;
          show([error.message], "#c22");
        }
      );
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
