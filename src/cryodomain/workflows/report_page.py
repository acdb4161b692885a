"""The report page's style sheet and its one script (the latent colour selector), inlined."""

from __future__ import annotations

PAGE_STYLE = """
:root { --ink: #1d2330; --muted: #5b6473; --line: #dde2ea; --accent: #2f5d9b; --paper: #ffffff; --back: #f4f6f9; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--back); color: var(--ink);
       font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background: #1f2f4a; color: #fff; padding: 18px 32px 0; position: sticky; top: 0; z-index: 10;
         box-shadow: 0 2px 6px rgba(0,0,0,.15); }
header h1 { margin: 0; font-size: 22px; font-weight: 600; }
header p { margin: 4px 0 10px; color: #c9d3e3; font-size: 13px; }
nav { display: flex; flex-wrap: wrap; gap: 4px; }
nav a { color: #dfe7f5; text-decoration: none; padding: 6px 12px; border-radius: 6px 6px 0 0; font-size: 14px; }
nav a:hover { background: rgba(255,255,255,.12); }
main { max-width: 1400px; margin: 0 auto; padding: 16px 32px 48px; }
section { background: var(--paper); border: 1px solid var(--line); border-radius: 10px; padding: 18px 24px 22px;
          margin: 18px 0; scroll-margin-top: 110px; }
h2 { margin: 0 0 6px; font-size: 20px; color: var(--accent); }
h3 { margin: 18px 0 6px; font-size: 16px; }
.intro { margin: 0 0 12px; color: var(--muted); max-width: 70em; }
.note { color: var(--muted); font-size: 13px; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 14px; }
th, td { text-align: left; padding: 5px 14px 5px 0; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; color: var(--muted); }
table.facts td:first-child { white-space: nowrap; padding-right: 28px; }
table.facts td { word-break: break-all; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 3px; margin-right: 6px; vertical-align: -1px; }
pre { background: #f7f8fa; border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; font-size: 12.5px;
      overflow-x: auto; max-height: 420px; }
details summary { cursor: pointer; color: var(--accent); margin: 10px 0 4px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr)); gap: 12px 24px; }
.grid.wide { grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); }
.cell { min-width: 0; }
.controls { margin: 4px 0 10px; }
select { font: inherit; padding: 3px 6px; border-radius: 5px; border: 1px solid #b8c1cf; }
img.picture { max-width: 100%; border: 1px solid var(--line); border-radius: 6px; }
"""

_COLOUR_SELECTOR = """
(function () {
  var settings = JSON.parse(document.getElementById("latent-colourings").textContent);
  var select = document.getElementById("latent-colour");
  function update(option) {
    if (option.kind === "cluster") {
      var colours = option.values.map(function (v) { return settings.palette[v % settings.palette.length]; });
      return {"marker.color": [colours], "marker.showscale": false};
    }
    return {"marker.color": [option.values], "marker.colorscale": "Viridis", "marker.cmin": option.cmin,
            "marker.cmax": option.cmax, "marker.showscale": true, "marker.colorbar.title.text": option.unit};
  }
  select.addEventListener("change", function () {
    var change = update(settings.options[Number(select.value)]);
    settings.plots.forEach(function (id) {
      var plot = document.getElementById(id);
      if (plot) { Plotly.restyle(plot, change, [settings.trace]); }
    });
  });
})();
"""


def colour_selector_script() -> str:
    """The script that recolours every latent scatter when the selector changes (data in #latent-colourings)."""
    return _COLOUR_SELECTOR
