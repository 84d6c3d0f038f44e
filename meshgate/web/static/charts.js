// Draws every <div class="chart" data-chart="{...}"> with uPlot: one line per series, a point per UTC day.
"use strict";

const PALETTE = ["#2557d6", "#e07b00", "#067647", "#b42318", "#7a4cc2", "#0e7c86", "#a15c07", "#5d6470"];

function drawChart(element) {
  const data = JSON.parse(element.dataset.chart);
  const width = Math.max(element.clientWidth, 320);
  const options = {
    width,
    height: 240,
    scales: { x: { time: true } },
    axes: [{}, { size: 70, values: (u, ticks) => ticks.map((t) => t.toLocaleString()) }],
    series: [
      { label: "Day (UTC)", value: (u, t) => (t == null ? "" : new Date(t * 1000).toISOString().slice(0, 10)) },
      ...data.series.map((s, i) => ({
        label: s.label,
        stroke: PALETTE[i % PALETTE.length],
        width: 2,
        points: { show: true, size: 5 },
        value: (u, v) => (v == null ? "" : v.toLocaleString()),
      })),
    ],
  };
  const plot = new uPlot(options, [data.x, ...data.series.map((s) => s.values)], element);
  element.dataset.drawn = "true";
  window.addEventListener("resize", () => plot.setSize({ width: Math.max(element.clientWidth, 320), height: 240 }));
}

for (const element of document.querySelectorAll("div.chart[data-chart]")) drawChart(element);
