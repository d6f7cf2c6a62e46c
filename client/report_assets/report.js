// The user lookup. Per-user data is JSON in #report-data; every string from it is set as text
// (textContent, attributes), never parsed as HTML. Charts are drawn like the page's own
// (report.py): the heatmap is a copy of its template, the timeline the same geometry.
(() => {
  "use strict";
  const DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
  const SVG = "http://www.w3.org/2000/svg";
  const TIMELINE = { width: 960, height: 240, left: 56, right: 12, top: 14, bottom: 30, maxSlot: 64 };

  const data = JSON.parse(document.getElementById("report-data").textContent);
  const users = new Map(Object.entries(data.users));
  const form = document.getElementById("user-search");
  const query = document.getElementById("user-query");
  const result = document.getElementById("user-result");

  document.getElementById("needs-script").remove();

  const fmt = (n) => n.toLocaleString("en-US");

  function duration(seconds) {
    const days = Math.floor(seconds / 86400);
    const hours = Math.floor((seconds % 86400) / 3600);
    const minutes = Math.floor((seconds % 3600) / 60);
    const secs = seconds % 60;
    const two = (n) => String(n).padStart(2, "0");
    if (days) return `${days}d ${two(hours)}h`;
    if (hours) return `${hours}h ${two(minutes)}m`;
    return `${minutes}m ${two(secs)}s`;
  }

  function heatColor(value, maximum) {
    if (value <= 0 || maximum <= 0) return "var(--zero)";
    const t = 0.15 + 0.85 * (value / maximum);
    const low = [222, 232, 255], high = [35, 56, 160];
    const [r, g, b] = low.map((lo, i) => Math.round(lo + (high[i] - lo) * t));
    return `rgb(${r},${g},${b})`;
  }

  function niceStep(peak, ticks = 4) {
    if (peak <= 0) return 1;
    const raw = peak / ticks;
    const power = raw >= 1 ? 10 ** Math.floor(Math.log10(raw)) : 1;
    return [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  }

  function el(tag, attrs = {}, text = null) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== null) node.textContent = text;
    return node;
  }

  function svgEl(tag, attrs = {}, text = null) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== null) node.textContent = text;
    return node;
  }

  function section(title, body) {
    const wrap = el("div");
    wrap.append(el("h3", {}, title), body);
    return wrap;
  }

  function empty(chart, message) {
    return el("p", { class: "empty", "data-chart": chart }, message);
  }

  function bars(chart, pairs, show = fmt) {
    if (!pairs || !pairs.length) return empty(chart, "Nothing to show.");
    const peak = Math.max(...pairs.map((p) => p[1])) || 1;
    const list = el("ol", { class: "bars", "data-chart": chart });
    pairs.forEach(([label, value], i) => {
      const row = el("li", { class: "bar", "data-label": label, "data-value": String(value) });
      const track = el("span", { class: "track" });
      track.append(el("span", { class: "fill", style: `width:${((100 * value) / peak).toFixed(2)}%` }));
      row.append(
        el("span", { class: "rank" }, String(i + 1)),
        el("span", { class: "name", title: label }, label),
        track,
        el("span", { class: "num" }, show(value)),
      );
      list.append(row);
    });
    return list;
  }

  function heatmap(cells) {
    const counts = new Map(cells.map(([index, n]) => [index, n]));
    const peak = Math.max(0, ...counts.values());
    const frag = document.getElementById("heatmap-template").content.cloneNode(true);
    for (const rect of frag.querySelectorAll("rect.cell")) {
      const day = DAYS.indexOf(rect.dataset.day);
      const hour = Number(rect.dataset.hour);
      const value = counts.get(day * 24 + hour) || 0;
      rect.dataset.value = String(value);
      rect.setAttribute("fill", heatColor(value, peak));
      const two = String(hour).padStart(2, "0");
      rect.querySelector("title").textContent = `${rect.dataset.day} ${two}:00–${two}:59: ${fmt(value)} listens`;
    }
    const peakLabel = frag.querySelector('[data-label="peak"]');
    peakLabel.dataset.value = String(peak);
    peakLabel.textContent = `${fmt(peak)} listens`;
    const wrap = el("div");
    wrap.append(frag);
    return wrap;
  }

  function timeline(chart, periods) {
    if (!periods || !periods.length) return empty(chart, "No listens.");
    const m = TIMELINE;
    const plotW = m.width - m.left - m.right;
    const plotH = m.height - m.top - m.bottom;
    const peak = Math.max(...periods.map((p) => p[1]));
    const step = niceStep(peak);
    const top = Math.max(step, Math.ceil(peak / step) * step);
    const svg = svgEl("svg", {
      class: "timeline", "data-chart": chart, viewBox: `0 0 ${m.width} ${m.height}`, role: "img",
      "aria-label": "listens per month",
    });
    for (let tick = 0; tick <= top; tick += step) {
      const y = (m.top + plotH - (plotH * tick) / top).toFixed(1);
      svg.append(svgEl("line", { class: "grid", x1: m.left, x2: m.width - m.right, y1: y, y2: y }));
      svg.append(svgEl("text", { class: "axis", x: m.left - 6, y: (Number(y) + 4).toFixed(1), "text-anchor": "end" }, fmt(tick)));
    }
    const slot = Math.min(plotW / periods.length, m.maxSlot);
    const start = m.left + (plotW - slot * periods.length) / 2;
    const gap = slot > 3 ? Math.min(slot * 0.15, 2) : 0;
    const labelEvery = Math.max(1, Math.ceil(periods.length / 10));
    periods.forEach(([label, value], i) => {
      const x = start + i * slot;
      const h = (plotH * value) / top;
      const rect = svgEl("rect", {
        class: "point", x: (x + gap / 2).toFixed(2), y: (m.top + plotH - h).toFixed(2),
        width: Math.max(slot - gap, 0.5).toFixed(2), height: h.toFixed(2), "data-label": label, "data-value": String(value),
      });
      rect.append(svgEl("title", {}, `${label}: ${fmt(value)} listens`));
      svg.append(rect);
      if (i % labelEvery === 0) {
        svg.append(svgEl("text", { class: "axis", x: (x + slot / 2).toFixed(1), y: m.height - 10, "text-anchor": "middle" }, label));
      }
    });
    return svg;
  }

  // [first "YYYY-MM", number of months, [[index, listens], ...]] -> every month's [label, listens].
  function months(compact) {
    if (!compact || !compact.length) return [];
    const [first, length, nonEmpty] = compact;
    const start = Number(first.slice(0, 4)) * 12 + Number(first.slice(5, 7)) - 1;
    const counts = new Map(nonEmpty);
    return Array.from({ length }, (_, i) => {
      const n = start + i;
      const label = `${String(Math.floor(n / 12)).padStart(4, "0")}-${String((n % 12) + 1).padStart(2, "0")}`;
      return [label, counts.get(i) || 0];
    });
  }

  function fact(label, key, value, raw) {
    const box = el("div", { class: "fact", "data-label": key, "data-value": String(raw) });
    box.append(el("div", { class: "fact-label" }, label), el("div", { class: "fact-value" }, value));
    return box;
  }

  function showUser(id, record) {
    const panel = el("div", { class: "user", "data-user": id });
    panel.append(el("div", { class: "user-name" }, id));
    const facts = el("div", { class: "user-facts" });
    facts.append(fact("Listening time", "total_time", duration(record.t), record.t));
    facts.append(fact("Top artist", "top_artist", record.a, record.a));
    if (record.d) {
      const listens = record.d.reduce((sum, cell) => sum + cell[1], 0);
      facts.append(fact("Listens", "listens", fmt(listens), listens));
    }
    panel.append(facts);

    if (data.detailed) {
      const columns = el("div", { class: "user-columns" });
      columns.append(section("Top artists", bars("user-top-artists", record.ta)));
      columns.append(section("Top songs", bars("user-top-songs", record.ts)));
      panel.append(columns);
      panel.append(section("By weekday and hour", record.d ? heatmap(record.d) : empty("user-heatmap", "Not in the per-user statistics.")));
      panel.append(section("By month", timeline("user-months", months(record.m))));
    }

    const recs = record.r || [];
    let recList;
    if (recs.length) {
      recList = el("ol", { class: "plain", "data-chart": "user-recommendations" });
      for (const song of recs) recList.append(el("li", { class: "rec", "data-label": song }, song));
    } else {
      recList = empty("user-recommendations", "No recommendations for this user.");
    }
    panel.append(section("Recommended", recList));
    if (record.pa) panel.append(section("Artists for you", personalized(record.pa, record.pb)));
    result.replaceChildren(panel);
  }

  // Artists the user has not played, best first: learned from listeners of similar taste, or
  // the most popular ones when the user's history gave the model too little to go on.
  function personalized(pairs, by) {
    const wrap = el("div", { "data-chart": "user-artists-for-you", "data-by": by });
    const why = by === "popularity"
      ? "Popular artists you have not played: your history is too short to learn your taste from."
      : by.endsWith("+popularity")
        ? `From listeners with similar taste (${by.split("+")[0]}), then popular artists you have not played.`
        : `From listeners with similar taste (${by}).`;
    if (!pairs.length) {
      wrap.append(empty("user-artists-for-you-list", "No artist left that this user has not played."));
      return wrap;
    }
    wrap.append(el("p", { class: "note" }, why));
    const list = el("ol", { class: "plain" });
    for (const [artist, score] of pairs) {
      list.append(el("li", { class: "rec", "data-label": artist, "data-score": String(score) }, artist));
    }
    wrap.append(list);
    return wrap;
  }

  function showMissing(id) {
    let message;
    if (data.total > users.size) {
      message = `No user “${id}” among the ${fmt(users.size)} most active users this page holds (of ${fmt(data.total)}).`;
      if (data.source) message += ` Every user's statistics are in ${data.source}.`;
    } else {
      message = `No user “${id}” in this run.`;
    }
    result.replaceChildren(el("p", { class: "missing not-found", "data-user": id }, message));
  }

  function lookup(raw) {
    if (raw === "") {
      result.replaceChildren();
      return;
    }
    // An exact user_id first; a pasted one often brings spaces along.
    const id = users.has(raw) ? raw : raw.trim();
    if (users.has(id)) showUser(id, users.get(id));
    else showMissing(raw);
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    lookup(query.value);
    if (query.value) history.replaceState(null, "", `#user=${encodeURIComponent(query.value)}`);
  });

  // A link to report.html#user=U1 opens on that user.
  if (location.hash.startsWith("#user=")) {
    try {
      query.value = decodeURIComponent(location.hash.slice(6));
      lookup(query.value);
    } catch (err) {
      if (!(err instanceof URIError)) throw err;
    }
  }
})();
