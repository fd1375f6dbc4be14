// The console's own script (no inline script anywhere: the CSP is script-src 'self').
// Draws the stats charts from the JSON data block #stats-data with the vendored Chart.js.
(function () {
  "use strict";

  var COLORS = {
    allowed: "#2e7d32",
    denied: "#c62828",
    rejected: "#ef6c00",
    error: "#6a1b9a",
    bar: "#c62828",
    p50: "#1565c0",
    p99: "#90caf9"
  };

  function bar(id, labels, datasets, horizontal, stacked) {
    var canvas = document.getElementById(id);
    if (!canvas) return;
    new window.Chart(canvas, {
      type: "bar",
      data: { labels: labels, datasets: datasets },
      options: {
        animation: false,
        indexAxis: horizontal ? "y" : "x",
        responsive: true,
        maintainAspectRatio: false,
        plugins: { legend: { display: datasets.length > 1 } },
        datasets: { bar: { maxBarThickness: 36 } },
        scales: { x: { stacked: !!stacked, beginAtZero: true }, y: { stacked: !!stacked, beginAtZero: true } }
      }
    });
  }

  function drawStats() {
    var node = document.getElementById("stats-data");
    if (!node || !window.Chart) return;
    var stats = JSON.parse(node.textContent);
    var hours = stats.per_hour || [];
    var labels = hours.map(function (h) { return String(h.hour).slice(5, 13).replace("T", " ") + "h"; });
    var outcomes = ["allowed", "denied", "rejected", "error"];
    bar("chart-per-hour", labels, outcomes.map(function (o) {
      return { label: o, data: hours.map(function (h) { return h[o] || 0; }), backgroundColor: COLORS[o] };
    }), false, true);
    var tools = stats.top_denied_tools || [];
    bar("chart-tools", tools.map(function (t) { return (t.server || "") + "/" + (t.tool || ""); }),
      [{ label: "denials", data: tools.map(function (t) { return t.count; }), backgroundColor: COLORS.bar }], true);
    var subjects = stats.top_denied_subjects || [];
    bar("chart-subjects", subjects.map(function (s) { return s.subject || "(none)"; }),
      [{ label: "denials", data: subjects.map(function (s) { return s.count; }), backgroundColor: COLORS.bar }], true);
    var reasons = stats.denials_by_reason || [];
    bar("chart-reasons", reasons.map(function (r) { return r.reason; }),
      [{ label: "denials", data: reasons.map(function (r) { return r.count; }), backgroundColor: COLORS.bar }], true);
    var latency = stats.latency_by_server || [];
    bar("chart-latency", latency.map(function (l) { return l.server || "(none)"; }), [
      { label: "p50 ms", data: latency.map(function (l) { return l.p50_ms; }), backgroundColor: COLORS.p50 },
      { label: "p99 ms", data: latency.map(function (l) { return l.p99_ms; }), backgroundColor: COLORS.p99 }
    ], false);
    document.body.setAttribute("data-charts", "drawn");
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", drawStats);
  } else {
    drawStats();
  }
})();
