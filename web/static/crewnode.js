// crewnode: small progressive enhancement. Everything works without it.
// - live: when the node accepts entries (GET /api/events sends `change`), fetch this page again
//   and swap the content of <main>, keeping what is being typed, focus, open details and errors;
// - times in <time datetime> are shown in local time;
// - long member checklists get a filter box.
(function () {
  "use strict";

  function localTimes(root) {
    var fmt;
    try {
      fmt = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short", year: "numeric", hour: "2-digit", minute: "2-digit" });
    } catch (e) { return; }
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (!isNaN(d)) { el.title = el.textContent; el.textContent = fmt.format(d); }
    });
  }

  function filters(root) {
    root.querySelectorAll("[data-filterable]").forEach(function (list) {
      if (list.children.length < 12 || (list.previousElementSibling && list.previousElementSibling.classList.contains("filter"))) return;
      var id = list.id + "-filter";
      var box = document.createElement("div");
      box.className = "filter";
      var label = document.createElement("label");
      label.htmlFor = id; label.textContent = "Find a member"; label.className = "sub";
      var input = document.createElement("input");
      input.type = "search"; input.id = id; input.autocomplete = "off";
      input.addEventListener("input", function () {
        var q = input.value.trim().toLowerCase();
        Array.prototype.forEach.call(list.children, function (li) {
          li.hidden = q !== "" && li.textContent.toLowerCase().indexOf(q) < 0;
        });
      });
      box.appendChild(label); box.appendChild(input);
      list.parentNode.insertBefore(box, list);
    });
  }

  function enhance(root) { localTimes(root); filters(root); }

  // -- live refresh ---------------------------------------------------------------------------
  function fieldState(main) {
    var kept = {};
    main.querySelectorAll("input[id], textarea[id], select[id]").forEach(function (el) {
      if (el.type === "hidden" || el.type === "submit") return;
      if (el.type === "checkbox" || el.type === "radio") {
        kept[el.id] = { checked: el.checked, dirty: el.checked !== el.defaultChecked };
      } else if (el.tagName === "SELECT") {
        var def = Array.prototype.some.call(el.options, function (o) { return o.selected && o.defaultSelected; });
        kept[el.id] = { value: el.value, dirty: !def };
      } else {
        kept[el.id] = { value: el.value, dirty: el.value !== el.defaultValue, filter: el.type === "search" };
      }
    });
    return kept;
  }

  function swap(main, html) {
    var doc = new DOMParser().parseFromString(html, "text/html");
    var fresh = doc.querySelector("main");
    if (!fresh) return;
    var active = document.activeElement;
    var focusId = active && active.id && main.contains(active) ? active.id : null;
    var selection = null;
    if (focusId) { try { selection = [active.selectionStart, active.selectionEnd, active.selectionDirection]; } catch (e) { selection = null; } }
    var kept = fieldState(main);
    var open = {};
    main.querySelectorAll("details[id]").forEach(function (d) { open[d.id] = d.open; });
    var scrolls = {};
    main.querySelectorAll(".scroll[id], .text.clamp").forEach(function (el, i) { scrolls[el.id || "text-" + i] = el.scrollTop; });
    var errors = [];
    main.querySelectorAll("form[id] > .error").forEach(function (el) { errors.push([el.parentNode.id, el.cloneNode(true)]); });

    main.replaceChildren.apply(main, Array.prototype.slice.call(fresh.childNodes));
    if (fresh.dataset.liveUrl) main.dataset.liveUrl = fresh.dataset.liveUrl;
    if (doc.title) document.title = doc.title;
    enhance(main);

    errors.forEach(function (pair) {
      var form = document.getElementById(pair[0]);
      if (form && !form.querySelector(":scope > .error")) {
        var after = form.querySelector(':scope > input[type="hidden"]:last-of-type');
        if (after) after.after(pair[1]); else form.prepend(pair[1]);
        var det = form.closest("details"); if (det) det.open = true;
      }
    });
    Object.keys(kept).forEach(function (id) {
      var el = document.getElementById(id), k = kept[id];
      if (!el || !main.contains(el)) return;
      if ("checked" in k && (el.type === "checkbox" || el.type === "radio")) {
        if (k.dirty) el.checked = k.checked;
      } else if (k.dirty || (k.value && !el.defaultValue) || k.filter) {
        el.value = k.value;
        if (k.filter) el.dispatchEvent(new Event("input"));
      }
    });
    Object.keys(open).forEach(function (id) { var d = document.getElementById(id); if (d && d.tagName === "DETAILS") d.open = open[id]; });
    main.querySelectorAll(".scroll[id], .text.clamp").forEach(function (el, i) {
      var top = scrolls[el.id || "text-" + i]; if (top) el.scrollTop = top;
    });
    if (focusId) {
      var target = document.getElementById(focusId);
      if (target) {
        target.focus({ preventScroll: true });
        if (selection && selection[0] != null) { try { target.setSelectionRange(selection[0], selection[1], selection[2]); } catch (e) { /* not a text field */ } }
      }
    }
    document.dispatchEvent(new CustomEvent("crewnode:refreshed"));
  }

  function live() {
    var main = document.querySelector("main[data-live-url]");
    var status = document.getElementById("live-status");
    if (!main || !window.EventSource || !window.fetch || !window.DOMParser) return;
    var busy = false, again = false, leaving = false, wasDown = false;
    window.addEventListener("beforeunload", function () { leaving = true; });
    document.addEventListener("submit", function () { leaving = true; });

    function refresh() {
      if (leaving) return;
      if (busy) { again = true; return; }
      busy = true;
      fetch(main.dataset.liveUrl, { credentials: "same-origin", cache: "no-store", headers: { "X-Crewnode-Live": "1" } })
        .then(function (res) { return res.ok ? res.text() : null; })
        .then(function (html) { if (html && !leaving) swap(main, html); })
        .catch(function () { /* the node is away; the next event tries again */ })
        .then(function () {
          busy = false;
          if (again) { again = false; refresh(); }
        });
    }

    function show(on) {
      if (!status) return;
      status.hidden = false;
      status.classList.toggle("on", on);
      status.textContent = on ? "Live" : "Reconnecting…";
      status.title = on ? "This page updates by itself when records change" : "Lost contact with your node; trying again";
    }

    var source = new EventSource("/api/events");
    source.addEventListener("open", function () { show(true); if (wasDown) { wasDown = false; refresh(); } });
    source.addEventListener("error", function () { show(false); wasDown = true; });
    source.addEventListener("change", refresh);
    window.addEventListener("pagehide", function () { source.close(); });
  }

  function start() { enhance(document); live(); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
