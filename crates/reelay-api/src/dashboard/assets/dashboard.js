// reelay dashboard: keeps the live parts of a page fresh.
//
// Every element with a data-refresh attribute is re-fetched from that URL every few seconds
// (only while the tab is visible) and replaced when the server's x-fragment-key says its
// content changed, so a playing video or a focused button is left alone otherwise. The
// server renders and escapes everything; this script only moves its HTML into place. When
// the session has ended the page is reloaded, which leads to the sign-in form.
(function () {
  "use strict";

  var PERIOD_MS = 3000;

  function refresh(el) {
    var url = el.getAttribute("data-refresh");
    return fetch(url, {
      credentials: "same-origin",
      cache: "no-store",
      redirect: "manual",
      headers: { Accept: "text/html" },
    })
      .then(function (res) {
        if (res.type === "opaqueredirect" || res.status === 401 || res.status === 403) {
          window.location.reload();
          return;
        }
        if (!res.ok) {
          return;
        }
        var key = res.headers.get("x-fragment-key");
        return res.text().then(function (html) {
          if (key !== null && key === el.getAttribute("data-key")) {
            return;
          }
          var focused = document.activeElement;
          var focusedId = focused && el.contains(focused) ? focused.id : "";
          el.innerHTML = html;
          if (key !== null) {
            el.setAttribute("data-key", key);
          }
          if (focusedId) {
            var again = document.getElementById(focusedId);
            if (again) {
              again.focus();
            }
          }
        });
      })
      .catch(function () {
        // The server may be restarting: the next round tries again.
      });
  }

  function tick() {
    if (!document.hidden) {
      document.querySelectorAll("[data-refresh]").forEach(refresh);
    }
  }

  function start() {
    if (document.querySelector("[data-refresh]")) {
      window.setInterval(tick, PERIOD_MS);
    }
    // Buttons that need a second thought ask for it; without script they simply submit.
    document.addEventListener("submit", function (event) {
      var button = event.submitter;
      var ask = button && button.getAttribute("data-confirm");
      if (ask && !window.confirm(ask)) {
        event.preventDefault();
      }
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
