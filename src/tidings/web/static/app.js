// The dashboard's own script: small enhancements on top of server-rendered pages. No inline script is
// allowed by the pages' Content-Security-Policy, so every behaviour is declared with data- attributes.
(function () {
  "use strict";

  // <button data-copy="#id"> copies the text of that element (webhook URLs, new API keys).
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) return;
    var source = document.querySelector(button.getAttribute("data-copy"));
    if (!source) return;
    var text = source.value !== undefined ? source.value : source.textContent.trim();
    navigator.clipboard.writeText(text).then(function () {
      var was = button.textContent;
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = was; }, 1500);
    });
  });

  // <form data-confirm="Stop this campaign?"> asks before submitting.
  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute && event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) event.preventDefault();
  }, true);

  // <section data-live="/campaigns/7/live">: server-sent events whose name is an element id replace that
  // element's contents with the event's HTML (live figures while a campaign sends); "done" closes.
  function connectLive(root) {
    root.querySelectorAll("[data-live]").forEach(function (el) {
      if (el.dataset.liveConnected) return;
      el.dataset.liveConnected = "1";
      var source = new EventSource(el.getAttribute("data-live"));
      source.onmessage = function () {};
      source.addEventListener("update", function (event) {
        var parts = JSON.parse(event.data);
        Object.keys(parts).forEach(function (id) {
          var target = document.getElementById(id);
          if (target) { target.innerHTML = parts[id]; enhance(target); }  // (a chart in it is drawn)
        });
        document.dispatchEvent(new CustomEvent("tidings:live", { detail: parts }));
      });
      source.addEventListener("done", function () { source.close(); });
    });
  }

  // <div data-chart="series-id"> draws the uPlot chart described by <script type="application/json"
  // id="series-id">{"x": [epoch seconds], "series": [{"label": "Sent", "values": [...]}, ...]}</script>.
  var COLOURS = ["#1b5fc1", "#166534", "#8a4b00", "#7b2cbf", "#b42318"];
  function drawCharts(root) {
    if (typeof uPlot === "undefined") return;
    root.querySelectorAll("[data-chart]").forEach(function (el) {
      if (el.dataset.chartDrawn) return;
      var spec = document.getElementById(el.getAttribute("data-chart"));
      if (!spec) return;
      var data = JSON.parse(spec.textContent);
      el.dataset.chartDrawn = "1";
      var opts = {
        width: Math.max(320, el.clientWidth), height: 240,
        series: [{}].concat(data.series.map(function (s, i) {
          return { label: s.label, stroke: COLOURS[i % COLOURS.length], width: 2 };
        })),
        axes: [{}, {}],
      };
      // times shown in the account's zone ("tz"), not the browser's
      if (data.tz) opts.tzDate = function (ts) { return uPlot.tzDate(new Date(ts * 1e3), data.tz); };
      new uPlot(opts, [data.x].concat(data.series.map(function (s) { return s.values; })), el);
    });
  }

  // The inbox. <textarea data-saved-replies="json-id">: "/shortcut" then Tab or Enter puts the saved reply
  // in its place (the replies are {shortcut: text} in the JSON element). <select data-insert-into="#id">
  // inserts the chosen option's value at the caret of that field.
  function insertAt(field, text, from, to) {
    var value = field.value;
    field.value = value.slice(0, from) + text + value.slice(to);
    var caret = from + text.length;
    field.setSelectionRange(caret, caret);
    field.focus();
  }
  document.addEventListener("keydown", function (event) {
    var field = event.target;
    if (!field.matches || !field.matches("textarea[data-saved-replies]")) return;
    if (event.key !== "Tab" && event.key !== "Enter") return;
    var source = document.getElementById(field.getAttribute("data-saved-replies"));
    if (!source) return;
    var replies = JSON.parse(source.textContent || "{}");
    var end = field.selectionStart;
    var found = /(^|\s)\/([A-Za-z0-9_-]+)$/.exec(field.value.slice(0, end));
    if (!found || !Object.prototype.hasOwnProperty.call(replies, found[2].toLowerCase())) return;
    event.preventDefault();
    insertAt(field, replies[found[2].toLowerCase()], end - found[2].length - 1, end);
  });
  document.addEventListener("change", function (event) {
    var select = event.target;
    if (!select.matches || !select.matches("select[data-insert-into]") || !select.value) return;
    var field = document.querySelector(select.getAttribute("data-insert-into"));
    if (field) insertAt(field, select.value, field.selectionStart, field.selectionEnd);
    select.value = "";
  });

  // <form data-once>: a second submit while the first is on its way is dropped (the server would send it
  // once anyway: the form carries an idempotency key).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (event.defaultPrevented || !form.hasAttribute || !form.hasAttribute("data-once")) return;
    if (form.dataset.sent) { event.preventDefault(); return; }
    form.dataset.sent = "1";
  });

  // The inbox's thread shows its latest message: at the bottom when drawn, and after a live update that
  // redrew it.
  function toLatest() {
    var thread = document.getElementById("inbox-thread");
    if (thread) thread.scrollTop = thread.scrollHeight;
  }
  document.addEventListener("DOMContentLoaded", toLatest);
  document.addEventListener("tidings:live", function (event) {
    var parts = event.detail || {};
    // htmx wires the controls of what a live update drew (the template picker's redraw)
    if (window.htmx) Object.keys(parts).forEach(function (id) {
      var el = document.getElementById(id);
      if (el) window.htmx.process(el);
    });
    if (parts["inbox-thread"] !== undefined) toLatest();
  });

  function enhance(root) { connectLive(root); drawCharts(root); }
  document.addEventListener("DOMContentLoaded", function () { enhance(document); });
  document.addEventListener("htmx:afterSettle", function (event) { enhance(event.target); });
})();
