// face-agent console: the live view's polling and small form conveniences. Served from /console/static (the
// Content-Security-Policy allows scripts from this origin only); everything it shows is built with
// textContent, never innerHTML, so a name cannot inject markup.
"use strict";

function liveView(root) {
  const base = document.body.dataset.base;
  const refresh = Math.max(100, Number(root.dataset.refresh) || 300);
  const template = document.getElementById("camera-tpl");
  const cards = new Map();

  function card(id) {
    let el = cards.get(id);
    if (!el) {
      el = template.content.firstElementChild.cloneNode(true);
      el.dataset.camera = id;
      el.querySelector(".cam-id").textContent = id;
      root.appendChild(el);
      cards.set(id, el);
    }
    return el;
  }

  function label(face) {
    if (face.state === "known") return `${face.person_id} ${face.score ?? ""}`;
    if (face.state === "unknown") return "unknown";
    if (face.state === "unusable") return "low quality";
    return "…";
  }

  function details(face) {
    const parts = [label(face)];
    parts.push(`quality ${face.quality ?? "-"} (${face.quality_level ?? "-"})`);
    if (face.liveness) {
      const lv = face.liveness;
      parts.push(lv.passed ? "live: passed" : `live: ${lv.reasons.join(", ") || "no result"}`);
    } else {
      parts.push("liveness off");
    }
    return parts.join(" · ");
  }

  function draw(el, cam) {
    const health = cam.health || {};
    const problem = health.last_error ? ` · ${health.last_error}` : "";
    el.querySelector(".cam-health").textContent =
      `${health.state ?? "?"} · ${health.fps ?? "-"} fps · ${cam.faces.length} face(s)${problem}`;
    const img = el.querySelector(".frame-img");
    const boxes = el.querySelector(".boxes");
    const list = el.querySelector(".faces");
    if (cam.seq === null) return;
    const next = `${base}/live/${encodeURIComponent(el.dataset.camera)}/frame.jpg?seq=${cam.seq}`;
    if (img.dataset.seq !== String(cam.seq)) {
      img.dataset.seq = String(cam.seq);
      img.src = next;
    }
    boxes.replaceChildren();
    list.replaceChildren();
    for (const face of cam.faces) {
      const [x1, y1, x2, y2] = face.box;
      const box = document.createElement("div");
      box.className = `box ${face.state}`;
      box.style.left = `${(100 * x1) / cam.width}%`;
      box.style.top = `${(100 * y1) / cam.height}%`;
      box.style.width = `${(100 * (x2 - x1)) / cam.width}%`;
      box.style.height = `${(100 * (y2 - y1)) / cam.height}%`;
      const tag = document.createElement("span");
      tag.textContent = label(face);
      box.appendChild(tag);
      boxes.appendChild(box);
      const item = document.createElement("li");
      item.className = `face ${face.state}`;
      item.textContent = details(face);
      list.appendChild(item);
    }
  }

  async function poll() {
    try {
      const resp = await fetch(`${base}/live/cameras.json`, { credentials: "same-origin", cache: "no-store" });
      if (resp.status === 401) {
        window.location.assign(`${base}/login`);
        return;
      }
      const data = await resp.json();
      const ids = Object.keys(data.cameras).sort();
      document.getElementById("no-frames").hidden = ids.length > 0;
      for (const id of ids) draw(card(id), data.cameras[id]);
    } catch (err) {
      // the device restarting or the network away: keep polling
    }
    setTimeout(poll, refresh);
  }
  poll();
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (live) liveView(live);
  for (const select of document.querySelectorAll("select.autosubmit")) {
    select.addEventListener("change", () => select.form.submit());
  }
});
