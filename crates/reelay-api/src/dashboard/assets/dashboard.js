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

  // The same words as the server's (layout.rs, `age`).
  function ageText(seconds) {
    if (seconds < 60) {
      return seconds + " s ago";
    }
    if (seconds < 3600) {
      return Math.floor(seconds / 60) + " min ago";
    }
    if (seconds < 86400) {
      return Math.floor(seconds / 3600) + " h ago";
    }
    return Math.floor(seconds / 86400) + " d ago";
  }

  // Ages are kept current here, so that a list whose rows have no news is not replaced
  // (which would take the keyboard focus away) just because time passed.
  function ages() {
    document.querySelectorAll("time[data-age]").forEach(function (el) {
      var at = Date.parse(el.getAttribute("datetime"));
      if (!isNaN(at)) {
        el.textContent = ageText(Math.max(0, Math.floor((Date.now() - at) / 1000)));
      }
    });
  }

  function tick() {
    if (!document.hidden) {
      ages();
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
