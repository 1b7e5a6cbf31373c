/* Small progressive enhancements. The site works fully without this file. */
(function () {
  "use strict";

  function ready(fn) {
    if (document.readyState === "loading") {
      document.addEventListener("DOMContentLoaded", fn);
    } else {
      fn();
    }
  }

  /* Mark the current navigation link (the server usually does this already). */
  function markCurrentNav() {
    var links = document.querySelectorAll(".site-nav a[href]");
    if (!links.length) return;
    var here = window.location.pathname.replace(/\/+$/, "") || "/";
    for (var i = 0; i < links.length; i++) {
      var target = links[i].getAttribute("href").replace(/\/+$/, "") || "/";
      if (target === here) {
        links[i].setAttribute("aria-current", "page");
      }
    }
  }

  /* Live character counter for textareas with a maxlength and a hint element. */
  function characterCounter() {
    var area = document.getElementById("message");
    var hint = document.getElementById("message-hint");
    if (!area || !hint) return;
    var max = parseInt(area.getAttribute("maxlength"), 10);
    if (!max) return;
    hint.setAttribute("aria-live", "polite");
    var lastBucket = -1;

    function update() {
      var left = max - area.value.length;
      var near = left <= Math.max(50, Math.round(max * 0.05));
      hint.classList.toggle("is-near-limit", near);
      // Announce only occasionally so screen readers are not flooded.
      var bucket = near ? left : Math.floor(left / 500);
      if (bucket === lastBucket) return;
      lastBucket = bucket;
      hint.textContent = left + (left === 1 ? " character" : " characters") + " left (maximum " + max + ").";
    }

    area.addEventListener("input", update);
    update();
  }

  /* The anti-spam field ("website") is deliberately left alone: scripts never
     clear or fill it, so the server can rely on it being empty for humans. */

  /* Prevent accidental double submission of forms. */
  function preventDoubleSubmit() {
    var forms = document.querySelectorAll("form");
    for (var i = 0; i < forms.length; i++) {
      forms[i].addEventListener("submit", function (event) {
        var form = event.currentTarget;
        if (form.getAttribute("data-submitted")) {
          event.preventDefault();
          return;
        }
        form.setAttribute("data-submitted", "1");
        var button = form.querySelector("button[type=submit]");
        if (button) {
          button.setAttribute("aria-disabled", "true");
          // Re-enable after a while in case the user navigates back.
          window.setTimeout(function () {
            form.removeAttribute("data-submitted");
            button.removeAttribute("aria-disabled");
          }, 8000);
        }
      });
    }
    // Reset state when the page is restored from the back/forward cache.
    window.addEventListener("pageshow", function () {
      for (var j = 0; j < forms.length; j++) {
        forms[j].removeAttribute("data-submitted");
        var b = forms[j].querySelector("button[type=submit]");
        if (b) b.removeAttribute("aria-disabled");
      }
    });
  }

  /* Show the chosen file's size and warn early if it exceeds the limit. */
  function uploadSizeHint() {
    var input = document.getElementById("file");
    var hint = document.getElementById("file-hint");
    if (!input || !hint || !input.files) return;
    var match = /([\d.]+)\s*MB/.exec(hint.textContent || "");
    var limit = match ? parseFloat(match[1]) * 1024 * 1024 : 0;
    var original = hint.textContent;
    hint.setAttribute("aria-live", "polite");
    input.addEventListener("change", function () {
      var file = input.files && input.files[0];
      if (!file) {
        hint.textContent = original;
        hint.classList.remove("is-near-limit");
        input.setCustomValidity("");
        return;
      }
      var mb = (file.size / (1024 * 1024)).toFixed(file.size < 1024 * 1024 ? 2 : 1);
      if (limit && file.size > limit) {
        hint.textContent = "This file is " + mb + " MB, which is over the limit. " + original;
        hint.classList.add("is-near-limit");
        input.setCustomValidity("The file is too large.");
      } else {
        hint.textContent = "Selected file: " + mb + " MB. " + original;
        hint.classList.remove("is-near-limit");
        input.setCustomValidity("");
      }
    });
  }

  ready(function () {
    var tasks = [markCurrentNav, characterCounter, preventDoubleSubmit, uploadSizeHint];
    for (var i = 0; i < tasks.length; i++) {
      try {
        tasks[i]();
      } catch (err) {
        if (window.console && console.error) console.error(err);
      }
    }
  });
})();
