// Settings → WhatsApp: show the fieldset of the provider chosen in <select data-provider-choice>, and
// disable the others so that only the chosen provider's fields are sent.
(function () {
  "use strict";
  function show(choice) {
    document.querySelectorAll("fieldset[data-provider]").forEach(function (set) {
      var chosen = set.getAttribute("data-provider") === choice.value;
      set.hidden = !chosen;
      set.disabled = !chosen;
    });
  }
  document.addEventListener("change", function (event) {
    if (event.target.matches("[data-provider-choice]")) show(event.target);
  });
})();
