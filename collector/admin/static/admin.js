// auditlake admin: progressive enhancement only; every page works without it.
"use strict";
document.body.classList.add("js");

// Filters: hide the custom time fields unless "custom" is chosen; drop empty
// fields on submit so shared URLs stay short.
(function () {
  const form = document.getElementById("filters");
  if (!form) return;
  const range = document.getElementById("range");
  const custom = form.querySelectorAll("label.custom-time");
  function sync() {
    custom.forEach((el) => el.classList.toggle("hidden", range.value !== "custom"));
  }
  range.addEventListener("change", sync);
  sync();
  // Coming back (bfcache) must not leave fields disabled by the last submit.
  window.addEventListener("pageshow", () => form.querySelectorAll("input, select").forEach((el) => { el.disabled = false; }));
  form.addEventListener("submit", () => {
    form.querySelectorAll("input, select").forEach((el) => {
      if (el.value === "") el.disabled = true;
      if ((el.name === "from" || el.name === "to") && range.value !== "custom") el.disabled = true;
    });
  });
})();

// Exports: download in place and show rows so far, then the manifest link.
(function () {
  const status = document.querySelector(".export-status");
  document.querySelectorAll("a[data-export]").forEach((link) => {
    link.addEventListener("click", (ev) => {
      ev.preventDefault();
      const eid = Array.from(crypto.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, "0")).join("");
      const url = link.getAttribute("href") + "&eid=" + eid;
      const a = document.createElement("a");
      a.href = url;
      a.download = "";
      document.body.appendChild(a);
      a.click();
      a.remove();
      status.textContent = "Export starting…";
      const poll = async () => {
        try {
          const r = await fetch("/api/v1/exports/" + eid, { credentials: "same-origin" });
          if (r.ok) {
            const p = await r.json();
            if (p.done) {
              status.innerHTML = "";
              status.append("Export done: " + p.rows.toLocaleString() + " rows. ");
              const m = document.createElement("a");
              m.href = p.manifest;
              m.textContent = "Signed manifest";
              status.append(m);
              return;
            }
            const total = p.total == null ? "…" : p.total.toLocaleString();
            status.textContent = "Exporting: " + p.rows.toLocaleString() + " / " + total + " rows";
          }
        } catch (e) { /* keep polling */ }
        setTimeout(poll, 400);
      };
      setTimeout(poll, 300);
    });
  });
})();

// "Back to results" goes back when we came from the search page.
(function () {
  const back = document.querySelector("a[data-back]");
  if (!back) return;
  if (document.referrer && new URL(document.referrer).origin === location.origin) {
    back.addEventListener("click", (ev) => { ev.preventDefault(); history.back(); });
  }
})();
