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

  function enhance(root) { connectLive(root); drawCharts(root); }
  document.addEventListener("DOMContentLoaded", function () { enhance(document); });
  document.addEventListener("htmx:afterSettle", function (event) { enhance(event.target); });
})();
