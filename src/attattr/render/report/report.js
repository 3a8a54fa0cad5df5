/* attattr report: the head grid, the selected head's heatmaps and the attribution tree.
   Plain JavaScript, no dependencies, nothing loaded from the network. The data sits in the
   JSON block with id "report-data", written by attattr.report.

   For tests and for curious readers, window.attattrReport exposes:
     select(layer, head), selected() -> "L-H", values() -> {attention, attribution} (row-major
     query x key arrays of the selected head), checksum() -> the same weighted sums as the canvases'
     data-checksum attributes, errors (messages caught on this page), ready. */
(function () {
  "use strict";
  const api = { errors: [], ready: false };
  window.attattrReport = api;

  function fail(message) {
    api.errors.push(String(message));
    const banner = document.getElementById("error-banner");
    if (banner) {
      banner.hidden = false;
      banner.textContent = "Part of this report could not be shown: " + api.errors.join("; ");
    }
  }
  window.addEventListener("error", (e) => fail(e.message || String(e)));

  const escapeHtml = (s) =>
    String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  const fmt = (v) => {
    if (!Number.isFinite(v)) return String(v);
    if (v === 0) return "0";
    const a = Math.abs(v);
    return a >= 0.001 && a < 10000 ? v.toPrecision(4).replace(/(\.\d*?)0+$/, "$1").replace(/\.$/, "") : v.toExponential(2);
  };
  const shortLabel = (t) => (t.length > 14 ? t.slice(0, 13) + "…" : t);

  // ---- segments (sentence pairs) -------------------------------------------------------------
  // the same colours as the token chips and the tree figures: blue for segment 0, orange for 1
  const SEG_INK = ["#2e5d8a", "#9a5b13"];
  const SEG_TINT = ["#9dbbdc", "#e2b57a"];
  const segInk = (s) => SEG_INK[s] || "#343a40";
  const segName = (names, s) => (names && names[s]) || "segment " + s;
  function segmentStarts(segments) {
    // positions where a new segment begins: empty for a single segment
    const out = [];
    for (let i = 1; i < (segments || []).length; i++) if (segments[i] !== segments[i - 1]) out.push(i);
    return out;
  }

  // ---- colours -------------------------------------------------------------------------------
  function makeLut(anchors) {
    const rgb = anchors.map((h) => [1, 3, 5].map((k) => parseInt(h.slice(k, k + 2), 16)));
    const lut = new Uint8ClampedArray(256 * 3);
    for (let k = 0; k < 256; k++) {
      const t = (k / 255) * (rgb.length - 1);
      const i = Math.min(Math.floor(t), rgb.length - 2);
      const f = t - i;
      for (let c = 0; c < 3; c++) lut[3 * k + c] = rgb[i][c] * (1 - f) + rgb[i + 1][c] * f;
    }
    return lut;
  }

  // ---- float16 -------------------------------------------------------------------------------
  let F16 = null;
  function f16Table() {
    if (F16) return F16;
    F16 = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) {
      const e = (h >> 10) & 31;
      const m = h & 1023;
      let v;
      if (e === 0) v = m * 5.960464477539063e-8; // subnormal: m * 2^-24
      else if (e === 31) v = m ? NaN : Infinity;
      else v = (1 + m / 1024) * Math.pow(2, e - 15);
      F16[h] = h & 0x8000 ? -v : v;
    }
    return F16;
  }
  function decodeHead(b64, scale, count) {
    const bytes = atob(b64);
    const table = f16Table();
    const out = new Float64Array(count);
    for (let k = 0; k < count; k++) {
      out[k] = table[bytes.charCodeAt(2 * k) | (bytes.charCodeAt(2 * k + 1) << 8)] * scale;
    }
    return out;
  }
  function checksum(values) {
    // position-weighted, so a transposed or shifted matrix does not match
    let s = 0;
    for (let k = 0; k < values.length; k++) s += values[k] * (1 + (k % 13));
    return s;
  }

  // ---- setup ---------------------------------------------------------------------------------
  const D = JSON.parse(document.getElementById("report-data").textContent);
  document.querySelectorAll(".ramp[data-cmap]").forEach((el) => {
    const anchors = D.cmaps[el.dataset.cmap];
    if (anchors) el.style.background = "linear-gradient(to right, " + anchors.join(", ") + ")";
  });

  function measureCtx(font) {
    const ctx = document.createElement("canvas").getContext("2d");
    ctx.font = font;
    return ctx;
  }

  // ---- heads and heatmaps --------------------------------------------------------------------
  function setupHeads(A) {
    const n = A.n;
    const H = A.heads;
    const luts = { seq: makeLut(D.cmaps.seq), div: makeLut(D.cmaps.div) };
    const grid = document.getElementById("head-grid");
    const canvases = { attention: document.getElementById("attn-canvas"), attribution: document.getElementById("attr-canvas") };
    const tooltip = document.getElementById("tooltip");
    const buttons = new Map();
    grid.querySelectorAll("button.head").forEach((b) => buttons.set(b.dataset.layer + "-" + b.dataset.head, b));

    const state = { layer: null, head: null, values: null, scale: "head", hover: null, pin: null, layout: null };
    const starts = segmentStarts(A.segments); // non-empty for a sentence pair
    const images = { attention: document.createElement("canvas"), attribution: document.createElement("canvas") };

    function headIndex(layer, head) {
      const pos = A.layers.indexOf(layer);
      if (pos < 0 || head < 0 || head >= H) throw new Error("no head " + layer + "-" + head + " in this report");
      return pos * H + head;
    }
    function range(kind) {
      const idx = headIndex(state.layer, state.head);
      let peak = state.scale === "all" ? A[kind].max : A[kind].scales[idx];
      if (!(peak > 0)) peak = 1;
      return kind === "attention" ? [0, peak] : [-peak, peak];
    }

    function computeLayout() {
      const maps = document.querySelector(".maps");
      const avail = Math.max(240, Math.min(640, ((maps ? maps.clientWidth : 1000) - 24) / 2));
      let font = 11;
      let ctx = measureCtx(font + "px system-ui, sans-serif");
      const widest = (c) => Math.min(110, Math.max(10, ...A.tokens.map((t) => c.measureText(shortLabel(t)).width)));
      let label = widest(ctx) + 8;
      let cell = Math.max(2, Math.min(28, Math.floor((avail - label - 6) / n)));
      if (cell < 12) {
        font = cell >= 9 ? cell - 1 : 8;
        ctx = measureCtx(font + "px system-ui, sans-serif");
        label = widest(ctx) + 8;
        cell = Math.max(2, Math.min(28, Math.floor((avail - label - 6) / n)));
      }
      const every = Math.max(1, Math.ceil((font + 1) / cell)); // label every k-th token when cells are small
      const size = n * cell;
      return { cell, font, every, left: label, top: label, width: label + size + 6, height: label + size + 6, size };
    }

    function paintImage(kind) {
      const vals = state.values[kind];
      const [lo, hi] = range(kind);
      const lut = kind === "attention" ? luts.seq : luts.div;
      const c = images[kind];
      c.width = n;
      c.height = n;
      const cctx = c.getContext("2d");
      const img = cctx.createImageData(n, n);
      for (let k = 0; k < n * n; k++) {
        const t = Math.max(0, Math.min(1, (vals[k] - lo) / (hi - lo)));
        const q = 3 * Math.round(t * 255);
        img.data[4 * k] = lut[q];
        img.data[4 * k + 1] = lut[q + 1];
        img.data[4 * k + 2] = lut[q + 2];
        img.data[4 * k + 3] = 255;
      }
      cctx.putImageData(img, 0, 0);
      const fig = canvases[kind].closest("figure");
      fig.querySelector(".legend .lo").textContent = fmt(lo);
      fig.querySelector(".legend .hi").textContent = fmt(hi);
    }

    function drawMap(kind) {
      const L = state.layout;
      const canvas = canvases[kind];
      const dpr = window.devicePixelRatio || 1;
      if (canvas.width !== Math.round(L.width * dpr) || canvas.height !== Math.round(L.height * dpr)) {
        canvas.width = Math.round(L.width * dpr);
        canvas.height = Math.round(L.height * dpr);
        canvas.style.width = L.width + "px";
        canvas.style.height = L.height + "px";
      }
      const ctx = canvas.getContext("2d");
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.fillStyle = "#fff";
      ctx.fillRect(0, 0, L.width, L.height);
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(images[kind], L.left, L.top, L.size, L.size);
      ctx.strokeStyle = "#ced4da";
      ctx.lineWidth = 1;
      ctx.strokeRect(L.left - 0.5, L.top - 0.5, L.size + 1, L.size + 1);
      if (starts.length) drawSegments(ctx, L);

      const focus = state.hover || state.pin;
      ctx.textBaseline = "middle";
      for (let i = 0; i < n; i++) {
        const on = focus && (focus.i === i || focus.j === i);
        if (i % L.every !== 0 && !on) continue;
        const tok = shortLabel(A.tokens[i]);
        const strong = (w) => (w ? "bold " : "") + L.font + "px system-ui, sans-serif";
        // row label: query token i
        ctx.font = strong(focus && focus.i === i);
        const ink = A.special[i] ? "#868e96" : starts.length ? segInk(A.segments[i]) : "#343a40";
        ctx.fillStyle = focus && focus.i === i ? "#d9480f" : ink;
        ctx.textAlign = "right";
        ctx.fillText(tok, L.left - 4, L.top + (i + 0.5) * L.cell);
        // column label: key token i, written upwards
        ctx.save();
        ctx.translate(L.left + (i + 0.5) * L.cell, L.top - 4);
        ctx.rotate(-Math.PI / 2);
        ctx.font = strong(focus && focus.j === i);
        ctx.fillStyle = focus && focus.j === i ? "#d9480f" : ink;
        ctx.textAlign = "left";
        ctx.fillText(tok, 0, 0);
        ctx.restore();
      }
      if (focus) {
        ctx.fillStyle = "rgba(217, 72, 15, 0.08)";
        ctx.fillRect(L.left, L.top + focus.i * L.cell, L.size, L.cell);
        ctx.fillRect(L.left + focus.j * L.cell, L.top, L.cell, L.size);
        ctx.strokeStyle = "#d9480f";
        ctx.lineWidth = 2;
        ctx.strokeRect(L.left + focus.j * L.cell - 1, L.top + focus.i * L.cell - 1, L.cell + 2, L.cell + 2);
      }
      canvas.dataset.cell = L.cell;
      canvas.dataset.left = L.left;
      canvas.dataset.top = L.top;
      if (starts.length) canvas.dataset.segmentStarts = starts.join(",");
    }

    function drawSegments(ctx, L) {
      // a strip in each token's segment colour along both axes, and a line where the segments meet
      const strip = 2;
      for (let i = 0; i < n; i++) {
        ctx.fillStyle = SEG_TINT[A.segments[i]] || "#ced4da";
        ctx.fillRect(L.left - strip - 1, L.top + i * L.cell, strip, L.cell); // rows
        ctx.fillRect(L.left + i * L.cell, L.top - strip - 1, L.cell, strip); // columns
      }
      for (const b of starts) {
        const at = b * L.cell;
        for (const [style, width] of [["rgba(255, 255, 255, 0.9)", 3], ["#212529", 1.5]]) {
          ctx.strokeStyle = style; // a light edge keeps the dark line visible on dark cells
          ctx.lineWidth = width;
          ctx.beginPath();
          ctx.moveTo(L.left + at, L.top - strip - 1);
          ctx.lineTo(L.left + at, L.top + L.size);
          ctx.moveTo(L.left - strip - 1, L.top + at);
          ctx.lineTo(L.left + L.size, L.top + at);
          ctx.stroke();
        }
      }
    }

    function drawAll() {
      drawMap("attention");
      drawMap("attribution");
    }

    function fillHeadInfo() {
      const vals = state.values;
      const idx = headIndex(state.layer, state.head);
      const imp = A.importance[A.layers.indexOf(state.layer)][state.head];
      document.getElementById("selected-title").textContent = "Layer " + state.layer + ", head " + state.head;
      let sum = 0;
      for (let k = 0; k < n * n; k++) sum += vals.attribution[k];
      document.getElementById("selected-stats").textContent =
        "importance (largest score) " + fmt(imp) + " · sum of scores " + fmt(sum) +
        " · largest attention " + fmt(A.attention.scales[idx]);
      const order = Array.from({ length: n * n }, (_, k) => k);
      order.sort((a, b) => vals.attribution[b] - vals.attribution[a]);
      const body = document.querySelector("#head-edges tbody");
      body.innerHTML = order
        .slice(0, Math.min(8, n * n))
        .map((k) => {
          const i = Math.floor(k / n);
          const j = k % n;
          return (
            "<tr><td>" + escapeHtml(A.tokens[i]) + ' <span class="idx">#' + i + "</span> → " +
            escapeHtml(A.tokens[j]) + ' <span class="idx">#' + j + '</span></td><td class="num">' +
            fmt(vals.attribution[k]) + '</td><td class="num">' + fmt(vals.attention[k]) + "</td></tr>"
          );
        })
        .join("");
    }

    function select(layer, head) {
      layer = Number(layer);
      head = Number(head);
      const idx = headIndex(layer, head);
      const prev = buttons.get(state.layer + "-" + state.head);
      if (prev) {
        prev.classList.remove("selected");
        prev.setAttribute("aria-pressed", "false");
      }
      state.layer = layer;
      state.head = head;
      state.values = {
        attention: decodeHead(A.attention.data[idx], A.attention.scales[idx], n * n),
        attribution: decodeHead(A.attribution.data[idx], A.attribution.scales[idx], n * n),
      };
      const key = layer + "-" + head;
      const btn = buttons.get(key);
      if (btn) {
        btn.classList.add("selected");
        btn.setAttribute("aria-pressed", "true");
      }
      grid.dataset.selected = key;
      document.body.dataset.selected = key;
      canvases.attention.dataset.checksum = String(checksum(state.values.attention));
      canvases.attribution.dataset.checksum = String(checksum(state.values.attribution));
      canvases.attention.dataset.selected = key;
      canvases.attribution.dataset.selected = key;
      paintImage("attention");
      paintImage("attribution");
      fillHeadInfo();
      drawAll();
      if (state.hover) showTooltip(state.hover);
    }

    function showTooltip(h) {
      const k = h.i * n + h.j;
      tooltip.innerHTML =
        "layer " + state.layer + " · head " + state.head + "<br>query #" + h.i + " <b>" + escapeHtml(A.tokens[h.i]) +
        "</b> → key #" + h.j + " <b>" + escapeHtml(A.tokens[h.j]) + "</b><br>attention " + fmt(state.values.attention[k]) +
        " · attribution " + fmt(state.values.attribution[k]);
      tooltip.hidden = false;
      const pad = 14;
      const w = tooltip.offsetWidth;
      const hgt = tooltip.offsetHeight;
      let x = h.x + pad;
      let y = h.y + pad;
      if (x + w > window.innerWidth - 4) x = h.x - w - pad;
      if (y + hgt > window.innerHeight - 4) y = h.y - hgt - pad;
      tooltip.style.left = Math.max(4, x) + "px";
      tooltip.style.top = Math.max(4, y) + "px";
    }

    function onMove(e) {
      const L = state.layout;
      const rect = e.currentTarget.getBoundingClientRect();
      const j = Math.floor((e.clientX - rect.left - L.left) / L.cell);
      const i = Math.floor((e.clientY - rect.top - L.top) / L.cell);
      if (i < 0 || j < 0 || i >= n || j >= n) return onLeave();
      const changed = !state.hover || state.hover.i !== i || state.hover.j !== j;
      state.hover = { i, j, x: e.clientX, y: e.clientY };
      if (changed) drawAll();
      showTooltip(state.hover);
    }
    function onLeave() {
      tooltip.hidden = true;
      if (state.hover) {
        state.hover = null;
        drawAll();
      }
    }
    Object.values(canvases).forEach((c) => {
      c.addEventListener("mousemove", onMove);
      c.addEventListener("mouseleave", onLeave);
    });

    grid.addEventListener("click", (e) => {
      const b = e.target.closest("button.head");
      if (!b) return;
      state.pin = null;
      select(b.dataset.layer, b.dataset.head);
    });
    grid.addEventListener("keydown", (e) => {
      const moves = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] };
      const m = moves[e.key];
      if (!m) return;
      e.preventDefault();
      const pos = Math.max(0, Math.min(A.layers.length - 1, A.layers.indexOf(state.layer) + m[0]));
      const head = Math.max(0, Math.min(H - 1, state.head + m[1]));
      select(A.layers[pos], head);
      buttons.get(A.layers[pos] + "-" + head).focus();
    });
    document.querySelectorAll('input[name="scale"]').forEach((r) =>
      r.addEventListener("change", () => {
        state.scale = r.value;
        paintImage("attention");
        paintImage("attribution");
        drawAll();
      })
    );
    document.querySelectorAll("tr.edge").forEach((row) => {
      const go = () => {
        document.querySelectorAll("tr.edge.active").forEach((r) => r.classList.remove("active"));
        row.classList.add("active");
        state.pin = { i: Number(row.dataset.query), j: Number(row.dataset.key) };
        select(row.dataset.layer, row.dataset.head);
        document.getElementById("heads").scrollIntoView({ behavior: "smooth" });
      };
      row.addEventListener("click", go);
      row.addEventListener("keydown", (e) => {
        if (e.key === "Enter") go();
      });
    });
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        state.layout = computeLayout();
        drawAll();
      }, 100);
    });

    state.layout = computeLayout();
    const [l0, h0] = (grid.dataset.selected || A.initial.join("-")).split("-").map(Number);
    select(l0, h0);

    api.select = select;
    api.selected = () => state.layer + "-" + state.head;
    api.values = () => ({ attention: Array.from(state.values.attention), attribution: Array.from(state.values.attribution) });
    api.checksum = () => ({ attention: checksum(state.values.attention), attribution: checksum(state.values.attribution) });
    api.layout = () => Object.assign({}, state.layout);
  }

  // ---- tree ----------------------------------------------------------------------------------
  const SVG = "http://www.w3.org/2000/svg";
  function el(parent, name, attrs, text) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    parent.appendChild(node);
    return node;
  }

  function drawTree(T, box) {
    const n = T.tokens.length;
    const levels = T.layers.length; // layer position p sits at level p; the root one above the last
    const levelOf = new Map(T.layers.map((l, p) => [l, p]));
    const nodeLevel = new Map(T.nodes.map(([i, layer]) => [i, layer === null ? levels : levelOf.get(layer)]));
    const ctx = measureCtx("12px system-ui, sans-serif");
    const labelW = Math.min(120, Math.max(8, ...T.tokens.map((t) => ctx.measureText(shortLabel(t)).width)));
    // a sentence pair: the segments sit apart (a gap of GAP token widths), each on a named band
    const segs = T.segments || new Array(n).fill(0);
    const starts = segmentStarts(segs);
    const pair = starts.length > 0;
    const GAP = 0.8;
    const slots = n + GAP * starts.length;
    const shift = (i) => GAP * starts.filter((b) => b <= i).length;
    const avail = Math.max(400, box.clientWidth - 60 - 20);
    const dx = Math.max(16, Math.min(90, avail / slots));
    const rotate = labelW + 6 > dx;
    const labelH = rotate ? labelW * 0.82 + 14 : 22;
    const dy = Math.max(22, Math.min(40, 300 / (levels + 1)));
    const left = 60;
    const top = pair ? 30 : 14; // room for the segment names
    const yOf = (level) => top + (levels - level) * dy;
    const yTok = yOf(0) + 16;
    const xOf = (i) => left + (i + shift(i) + 0.5) * dx;
    const width = left + slots * dx + 16;
    const height = yTok + labelH + 4;
    const svg = el(box, "svg", { width, height, viewBox: "0 0 " + width + " " + height, role: "img" });
    el(svg, "title", {}, "attribution tree");
    if (pair) {
      const bounds = [0, ...starts, n];
      for (let r = 0; r + 1 < bounds.length; r++) {
        const s = segs[bounds[r]];
        const x0 = xOf(bounds[r]) - 0.45 * dx;
        const x1 = xOf(bounds[r + 1] - 1) + 0.45 * dx;
        el(svg, "rect", { class: "band seg" + s, x: x0, y: 4, width: x1 - x0, height: height - 8, rx: 3 });
        el(svg, "text", { class: "band-name seg" + s, x: (x0 + x1) / 2, y: 17, "text-anchor": "middle" }, segName(T.segment_names, s));
      }
      for (const b of starts) {
        const x = (xOf(b - 1) + xOf(b)) / 2;
        el(svg, "line", { class: "seg-boundary", x1: x, x2: x, y1: 4, y2: height - 4 });
      }
      box.dataset.segmentStarts = starts.join(",");
    }

    for (let level = 0; level <= levels; level++) {
      const y = yOf(level);
      el(svg, "line", { class: "grid", x1: left - 4, x2: width - 8, y1: y, y2: y });
      el(svg, "text", { class: "layer", x: left - 8, y: y + 3, "text-anchor": "end" }, level === levels ? "root" : "layer " + T.layers[level]);
    }
    for (const [i] of T.nodes) {
      el(svg, "line", { class: "stem", x1: xOf(i), x2: xOf(i), y1: yOf(nodeLevel.get(i)), y2: yTok - 10 });
    }
    const thr = typeof T.threshold === "number" ? T.threshold : 0;
    const crossDirs = new Map(); // "1-0" -> class, for the legend
    let crossCount = 0;
    T.edges.forEach(([p, c, layer, score], k) => {
      const y = yOf(p === T.root ? levels : levelOf.get(layer));
      const yc = yOf(nodeLevel.get(c));
      const x1 = xOf(p);
      const x2 = xOf(c);
      const isTop = p === T.root;
      const h = Math.min(dy * 0.45, 4 + Math.abs(x2 - x1) * 0.08);
      const d = isTop
        ? "M" + x1 + " " + y + " L" + x2 + " " + yc
        : "M" + x1 + " " + y + " Q" + (x1 + x2) / 2 + " " + (y - 2 * h) + " " + x2 + " " + yc;
      const w = isTop ? 1.5 : 1 + 3 * Math.max(0, Math.min(1, (score - thr) / Math.max(1e-9, 1 - thr)));
      // an edge between ordinary tokens of different segments (the tree module's "cross" kind)
      const cross = pair && !isTop && T.kinds && T.kinds[k] === "cross";
      let cls = "edge-line" + (isTop ? " top" : "");
      let crossText = "";
      if (cross) {
        const dir = segs[p] + "-" + segs[c];
        const dcls = dir === "1-0" ? "d10" : dir === "0-1" ? "d01" : "dxx";
        cls += " cross " + dcls;
        crossDirs.set(dir, dcls);
        crossCount++;
        crossText = "; crosses " + segName(T.segment_names, segs[p]) + " → " + segName(T.segment_names, segs[c]);
      }
      const path = el(svg, "path", { class: cls, d, "stroke-width": w.toFixed(2) });
      path.dataset.parent = p;
      path.dataset.child = c;
      el(path, "title", {},
        isTop ? "root → top node " + T.tokens[c] + " (row sum " + fmt(score) + ")"
          : "layer " + layer + ": " + T.tokens[p] + " #" + p + " takes from " + T.tokens[c] + " #" + c + ", score " + fmt(score) + crossText);
      if (!isTop) el(svg, "circle", { cx: x1, cy: y, r: 2.2, fill: "#c92a2a" });
    });
    for (const [i] of T.nodes) {
      const node = el(svg, "circle", { class: "node" + (i === T.root ? " root" : ""), cx: xOf(i), cy: yOf(nodeLevel.get(i)), r: 4.5 });
      node.dataset.index = i;
    }
    const inTree = new Set(T.nodes.map(([i]) => i));
    for (let i = 0; i < n; i++) {
      const attrs = { class: (inTree.has(i) ? "tok" : "tok out") + (pair ? " seg" + segs[i] : ""), x: xOf(i), y: yTok };
      if (rotate) {
        attrs["text-anchor"] = "end";
        attrs.transform = "rotate(-55 " + xOf(i) + " " + yTok + ")";
        attrs.y = yTok + 4;
      } else {
        attrs["text-anchor"] = "middle";
        attrs.y = yTok + 8;
      }
      const t = el(svg, "text", attrs, shortLabel(T.tokens[i]));
      el(t, "title", {}, "#" + i + " " + T.tokens[i] + (inTree.has(i) ? "" : " (not in the tree)"));
    }
    box.dataset.nodes = T.nodes.length;
    box.dataset.edges = T.edges.length;
    if (pair) {
      box.dataset.crossEdges = crossCount;
      treeLegend(box, T, crossDirs);
    }
  }

  function treeLegend(box, T, crossDirs) {
    // the segments' names and the edge styles (the cross directions that were drawn)
    const legend = document.createElement("div");
    legend.className = "tree-legend";
    legend.id = "tree-legend";
    const sample = (cls) => {
      const icon = document.createElementNS(SVG, "svg");
      icon.setAttribute("width", 26);
      icon.setAttribute("height", 10);
      el(icon, "path", { class: cls, d: "M1 8 Q13 -2 25 8", "stroke-width": 2.2 });
      return icon;
    };
    const entry = (icon, text) => {
      const span = document.createElement("span");
      span.className = "entry";
      span.appendChild(icon);
      span.appendChild(document.createTextNode(text));
      legend.appendChild(span);
    };
    entry(sample("edge-line"), "edge within a segment, or to a special token");
    const order = ["1-0", "0-1", ...Array.from(crossDirs.keys()).filter((d) => d !== "1-0" && d !== "0-1")];
    for (const dir of order) {
      if (!crossDirs.has(dir)) continue;
      const [a, b] = dir.split("-").map(Number);
      entry(sample("edge-line cross " + crossDirs.get(dir)), "crosses segments: " + segName(T.segment_names, a) + " → " + segName(T.segment_names, b));
    }
    if (!crossDirs.size) {
      const none = document.createElement("span");
      none.textContent = "no edge joins ordinary tokens of the two segments";
      legend.appendChild(none);
    }
    box.appendChild(legend);
  }

  // ---- start ---------------------------------------------------------------------------------
  try {
    if (D.attribution) setupHeads(D.attribution);
  } catch (e) {
    fail("heatmaps: " + (e && e.message ? e.message : e));
  }
  try {
    const box = document.getElementById("tree-box");
    if (D.tree && box && box.dataset.source === "json") drawTree(D.tree, box);
  } catch (e) {
    fail("tree: " + (e && e.message ? e.message : e));
  }
  api.ready = true;
  document.body.dataset.ready = "1";
})();
