// merpati dashboard: local times, and live updates from /ui/stream (server-sent events
// gathered by the server, so a storm of changes arrives as a few messages). A page names
// what it follows in <body data-live>. Devices and jobs are patched in place; other
// changes, and catching up after a reconnection, fetch the page again (at most once a
// second) and swap its <main>.
(() => {
  "use strict";
  const body = document.body;
  const words = JSON.parse(body.dataset.words || "{}");
  const lang = document.documentElement.lang === "id" ? "id-ID" : "en-GB";
  const fmt = new Intl.DateTimeFormat(lang, { dateStyle: "medium", timeStyle: "medium" });

  function localTime(el) {
    const raw = el.getAttribute("datetime");
    const d = new Date(raw);
    if (!raw || isNaN(d)) return;
    el.textContent = fmt.format(d);
    el.title = raw;
  }
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(localTime);
  }
  localTimes(document);

  const kinds = body.dataset.live;
  const dot = document.getElementById("live-state");
  if (!kinds || !window.EventSource) return;

  let pending = null;
  function refresh() {
    if (pending) return;
    pending = setTimeout(async () => {
      pending = null;
      try {
        const r = await fetch(location.href, { credentials: "same-origin" });
        if (!r.ok || r.redirected) return;
        const doc = new DOMParser().parseFromString(await r.text(), "text/html");
        const fresh = doc.getElementById("main");
        const current = document.getElementById("main");
        if (fresh && current) {
          current.replaceWith(fresh);
          localTimes(fresh);
        }
      } catch (_) { /* the next change or reconnection tries again */ }
    }, 1000);
  }

  function each(attr, id, fn) {
    document.querySelectorAll("[" + attr + '="' + CSS.escape(id) + '"]').forEach(fn);
  }
  function setDevice(item) {
    each("data-device", item.device_id, (el) => {
      const pill = el.hasAttribute("data-status") ? el : el.querySelector("[data-status]");
      if (pill) {
        pill.className = "status " + item.status;
        pill.textContent = words[item.status] || item.status;
      }
      const since = el.querySelector("[data-since]");
      if (since) {
        since.setAttribute("datetime", item.since);
        localTime(since);
      }
    });
    each("data-device-since", item.device_id, (el) => {
      el.setAttribute("datetime", item.since);
      localTime(el);
    });
  }
  function setJob(item) {
    each("data-job", item.job_id, (el) => {
      const bar = el.querySelector("progress");
      if (bar) {
        bar.max = Math.max(item.total, 1);
        bar.value = item.done;
      }
      const text = el.querySelector("[data-job-text]");
      if (text) {
        text.textContent = item.done + " / " + item.total + " · " +
          (item.finished ? words.finished : words.running);
      }
      if (item.finished) el.setAttribute("data-finished", "true");
    });
  }

  // Browsers keep few connections a site (six on HTTP/1.1): a page leaving (or kept in
  // the back-forward cache) gives its stream back, and takes a new one if shown again.
  let seenReady = false;
  let source = null;
  function connect() {
    source = new EventSource("/ui/stream?kinds=" + encodeURIComponent(kinds));
    source.addEventListener("ready", () => {
      dot.className = "live on";
      dot.title = words.live;
      // Back after a break, what happened meanwhile is read from the page itself; so is a
      // job that may have moved between the page's rendering and the stream's start.
      if (seenReady || document.querySelector("[data-job]:not([data-finished])")) refresh();
      seenReady = true;
    });
    source.addEventListener("devices", (e) => JSON.parse(e.data).devices.forEach(setDevice));
    source.addEventListener("jobs", (e) => JSON.parse(e.data).jobs.forEach(setJob));
    for (const kind of ["events", "deliveries", "endpoints", "incidents", "missed"]) {
      source.addEventListener(kind, refresh);
    }
    source.onerror = () => {
      dot.className = "live off";
      dot.title = words.reconnecting;
    };
  }
  window.addEventListener("pagehide", () => {
    if (source) source.close();
    source = null;
  });
  window.addEventListener("pageshow", (e) => {
    if (e.persisted && !source) connect();
  });
  connect();
})();
