// labelmaker batch report: the scene table (sort, filter), drawn from window.REPORT (assets/data.js).
// The view (sort column, direction, filters) lives in the address's #fragment, so a link keeps it.
(function () {
  "use strict";
  var data = window.REPORT;
  var table = document.getElementById("scenes");
  if (!data || !table) return;
  var cols = data.columns;
  var state = { sort: "scene", desc: false, q: "", flag: "", status: "" };

  function readHash() {
    var h = (location.hash || "").replace(/^#/, "");
    h.split("&").forEach(function (kv) {
      if (!kv) return;
      var i = kv.indexOf("=");
      var k = decodeURIComponent(i < 0 ? kv : kv.slice(0, i));
      var v = i < 0 ? "" : decodeURIComponent(kv.slice(i + 1).replace(/\+/g, " "));
      if (k === "desc") state.desc = v === "1" || v === "true";
      else if (k in state) state[k] = v;
    });
  }
  function writeHash() {
    var parts = ["sort=" + encodeURIComponent(state.sort)];
    if (state.desc) parts.push("desc=1");
    if (state.q) parts.push("q=" + encodeURIComponent(state.q));
    if (state.flag) parts.push("flag=" + encodeURIComponent(state.flag));
    if (state.status) parts.push("status=" + encodeURIComponent(state.status));
    history.replaceState(null, "", "#" + parts.join("&"));
  }
  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function fmt(key, v) {
    if (v === null || v === undefined) return "–";
    if (key === "labelled_share" || key === "disagree_share") return (100 * v).toFixed(1) + "%";
    if (key === "mean_confidence" || key === "entropy_bits" || key === "miou_3d") return v.toFixed(3);
    return String(v);
  }
  function flagCount(r) { return Object.keys(r.flags || {}).length; }
  function sortValue(r, key) {
    if (key === "flags") return flagCount(r);
    return r[key];
  }
  function matches(r) {
    var names = Object.keys(r.flags || {});
    if (state.flag === "any" && !names.length) return false;
    if (state.flag === "none" && names.length) return false;
    if (state.flag && state.flag !== "any" && state.flag !== "none" && names.indexOf(state.flag) < 0) return false;
    if (state.status && r.status !== state.status) return false;
    if (state.q) {
      var text = (r.scene + " " + r.status + " " + names.join(" ") + " " +
                  names.map(function (n) { return r.flags[n]; }).join(" ")).toLowerCase();
      var words = state.q.toLowerCase().split(/\s+/);
      for (var i = 0; i < words.length; i++) if (words[i] && text.indexOf(words[i]) < 0) return false;
    }
    return true;
  }
  function render() {
    var rows = data.rows.filter(matches);
    var key = state.sort, sign = state.desc ? -1 : 1;
    rows.sort(function (a, b) {
      var x = sortValue(a, key), y = sortValue(b, key);
      var xn = x === null || x === undefined, yn = y === null || y === undefined;
      if (xn || yn) return xn === yn ? (a.scene < b.scene ? -1 : 1) : (xn ? 1 : -1);  // blanks last
      if (x < y) return -sign;
      if (x > y) return sign;
      return a.scene < b.scene ? -1 : a.scene > b.scene ? 1 : 0;
    });
    var head = cols.map(function (c) {
      var mark = c[0] === state.sort ? (state.desc ? " ▼" : " ▲") : "";
      return '<th data-key="' + c[0] + '" class="sortable' + (mark ? " sorted" : "") + '">' + esc(c[1]) + mark + "</th>";
    }).join("");
    table.tHead.rows[0].innerHTML = head;
    var html = rows.map(function (r) {
      var cells = cols.map(function (c) {
        var k = c[0];
        if (k === "scene") return '<td class="scene"><a href="' + esc(r.page) + '">' + esc(r.scene) + "</a></td>";
        if (k === "status") return '<td><span class="st st-' + esc(r.status) + '">' + esc(r.status) + "</span></td>";
        if (k === "flags") {
          return '<td class="flags">' + Object.keys(r.flags || {}).map(function (f) {
            return '<span class="flag flag-' + esc(f) + '" title="' + esc(r.flags[f]) + '">' + esc(f.replace(/_/g, " ")) + "</span>" +
                   (f === "failed" ? ' <span class="msg">' + esc(r.flags[f]) + "</span>" : "");
          }).join(" ") + "</td>";
        }
        return '<td class="num">' + fmt(k, r[k]) + "</td>";
      }).join("");
      return '<tr data-scene="' + esc(r.scene) + '" data-flags="' + esc(Object.keys(r.flags || {}).join(" ")) + '">' + cells + "</tr>";
    }).join("");
    table.tBodies[0].innerHTML = html;
    document.getElementById("shown").textContent = rows.length + " of " + data.rows.length + " scenes";
    table.setAttribute("data-rows", String(rows.length));
    table.setAttribute("data-sort", state.sort + (state.desc ? " desc" : " asc"));
  }

  readHash();
  var q = document.getElementById("filter"), flag = document.getElementById("flag"), status = document.getElementById("status");
  q.value = state.q; flag.value = state.flag; status.value = state.status;
  q.addEventListener("input", function () { state.q = q.value; writeHash(); render(); });
  flag.addEventListener("change", function () { state.flag = flag.value; writeHash(); render(); });
  status.addEventListener("change", function () { state.status = status.value; writeHash(); render(); });
  table.tHead.addEventListener("click", function (ev) {
    var th = ev.target.closest("th");
    if (!th) return;
    var key = th.getAttribute("data-key");
    if (state.sort === key) state.desc = !state.desc; else { state.sort = key; state.desc = key !== "scene" && key !== "status"; }
    writeHash(); render();
  });
  render();
  document.body.setAttribute("data-report", "ready");
})();
