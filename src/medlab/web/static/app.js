// Draws every chart of the page from the figure the server embedded next to it
// (<script type="application/json" data-chart="ID">); the server decides what is drawn.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("script[data-chart]").forEach(function (block) {
    var figure = JSON.parse(block.textContent);
    var target = document.getElementById(block.dataset.chart);
    Plotly.newPlot(target, figure.data, figure.layout,
      { displaylogo: false, responsive: true }).then(function () {
      target.dataset.rendered = "true";
    });
  });
});
