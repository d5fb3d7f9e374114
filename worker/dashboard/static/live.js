// The dashboard's only script: no framework, no build.
// An element with data-refresh="URL" has its content replaced by URL's HTML every data-every ms
// (default 2000). Not while the pointer is over it or a control in it has focus, so a click on
// one of its buttons is never lost to a refresh, and not while the tab is hidden.
// A form with data-confirm="question" is sent only when the operator confirms.
(function () {
  "use strict";

  function refresh(element) {
    var every = parseInt(element.getAttribute("data-every") || "2000", 10);
    var pointerInside = false;
    element.addEventListener("mouseenter", function () { pointerInside = true; });
    element.addEventListener("mouseleave", function () { pointerInside = false; });

    function later() { window.setTimeout(tick, every); }

    function tick() {
      if (pointerInside || document.hidden || element.contains(document.activeElement)) {
        later();
        return;
      }
      fetch(element.getAttribute("data-refresh"), {
        credentials: "same-origin",
        headers: { "Accept": "text/html" }
      })
        .then(function (response) {
          if (!response.ok) { throw new Error("HTTP " + response.status); }
          return response.text();
        })
        .then(function (html) {
          element.innerHTML = html;
          element.removeAttribute("data-stale");
        })
        .catch(function () { element.setAttribute("data-stale", "1"); })
        .then(later);
    }

    later();
  }

  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { event.preventDefault(); }
  });

  Array.prototype.forEach.call(document.querySelectorAll("[data-refresh]"), refresh);
})();
