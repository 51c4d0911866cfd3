// The segment builder (segments/_builder.html): its selects and buttons redraw its rows on the server;
// keep the keyboard focus on the same control after a redraw (a new row's first field takes it instead,
// by its autofocus attribute).
(function () {
  "use strict";
  var focused = null;
  document.addEventListener("htmx:beforeSwap", function (event) {
    if (event.detail.target.id !== "seg-builder") return;
    var active = document.activeElement;
    focused = active && event.detail.target.contains(active) ? active.getAttribute("name") : null;
  });
  document.addEventListener("htmx:afterSettle", function (event) {
    if (event.detail.target.id !== "seg-builder" || !focused) return;
    var builder = event.detail.target;
    if (!builder.querySelector("[autofocus]")) {
      var again = builder.querySelector('[name="' + CSS.escape(focused) + '"]');
      if (again) again.focus();
    }
    focused = null;
  });
})();
