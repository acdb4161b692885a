"""One self-contained HTML report of a trained and analysed run.

``cryodomain analyze`` ends by writing ``OUT/report.html``; ``cryodomain report`` rebuilds it from
the run folder and the analysis folder (:mod:`~cryodomain.workflows.report_data`). The page holds
one copy of plotly.js and every figure's data, so it opens offline in any browser. Sections (their
ids are stable): ``run``, ``training``, ``latent``, ``segmentation``, ``trajectories``, ``motions``,
``images`` and, for a run evaluated against a simulation's truth, ``evaluation``. Beyond
:data:`MAX_POINTS` particles the latent scatter shows a random subsample (the page says so) over
the density of all of them.
"""

from __future__ import annotations

import datetime
import html
import json
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import plotly.io as pio
import plotly.offline

from cryodomain import __version__
from cryodomain.io.atomic import atomic_output
from cryodomain.plots import segment_colours
from cryodomain.workflows import report_figures as figures
from cryodomain.workflows.report_data import ReportData, read_report_data
from cryodomain.workflows.report_page import PAGE_STYLE, colour_selector_script

log = logging.getLogger(__name__)

# Latent points drawn at most (the density covers every particle).
MAX_POINTS = 10_000
# Residues drawn at most by the 3-D viewer (every n-th beyond).
MAX_TRACE_RESIDUES = 4000
SECTIONS = (
    ("run", "Run"),
    ("training", "Training"),
    ("latent", "Latent space"),
    ("segmentation", "Segmentation"),
    ("trajectories", "PC trajectories"),
    ("motions", "Segment motions"),
    ("images", "Images"),
    ("evaluation", "Accuracy"),
)
_PLOT_CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "png", "scale": 2}}


def default_evaluation(run_dir: str | Path) -> Path | None:
    """``RUN/evaluation`` (where ``cryodomain evaluate`` writes by default) when it holds a summary."""
    folder = Path(run_dir) / "evaluation"
    return folder if (folder / "summary.json").exists() else None


def write_report(run_dir: str | Path, analysis_dir: str | Path, out_path: str | Path | None = None, evaluation_dir: str | Path | None = None) -> Path:
    """Read the run and its analysis and write the report, atomically.

    Args:
        run_dir: the training run folder.
        analysis_dir: the folder ``cryodomain analyze`` wrote.
        out_path: the HTML file (default ``analysis_dir/report.html``).
        evaluation_dir: ``cryodomain evaluate``'s folder, or None for none.

    Returns:
        The written path.

    Raises:
        InputError: a file the report needs is missing or disagrees with the others.
    """
    data = read_report_data(run_dir, analysis_dir, evaluation_dir)
    page = render_report(data, sources={"run": Path(run_dir), "analysis": Path(analysis_dir)})
    path = Path(out_path) if out_path is not None else Path(analysis_dir) / "report.html"
    with atomic_output(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    log.info("report: %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


# ---------------------------------------------------------------------------------------------
# Pieces of HTML
# ---------------------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value))


def _figure(fig, div_id: str) -> str:
    """A figure's div and the script drawing it (plotly.js is in the page head, once)."""
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id, auto_play=False, config=_PLOT_CONFIG, default_width="100%")


def _table(header: Iterable[str], rows: Iterable[Iterable[str]], css: str = "") -> str:
    """An HTML table; cells are HTML already (escape text before)."""
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _swatch(colour: str) -> str:
    return f'<span class="swatch" style="background:{colour}"></span>'


def _number(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _section(key: str, title: str, body: str, intro: str = "") -> str:
    lead = f'<p class="intro">{intro}</p>' if intro else ""
    return f'<section id="{key}"><h2>{_e(title)}</h2>{lead}{body}</section>'


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


def _run_section(data: ReportData) -> str:
    run = data.run
    facts = _table(["", ""], ([f"<b>{_e(label)}</b>", _e(value)] for label, value in run.facts), "facts")
    parts = [facts]
    if run.conventions:
        rows = [[_e(reading), _e(value), _e(note)] for reading, value, note in run.conventions]
        parts.append(
            "<h3>Convention self-test</h3><p>Median correlation of the base model's images with the particles, read as given and read "
            "the other ways round; training stops when another reading is clearly better.</p>"
        )
        parts.append(_table(["reading", "median correlation", ""], rows))
    preflight = "\n".join(run.preflight) if run.preflight else "train.log holds no preflight"
    parts.append(f"<h3>Preflight (train.log)</h3><pre>{_e(preflight)}</pre>")
    if run.config_text:
        parts.append(f"<details><summary>Configuration (config.yaml)</summary><pre>{_e(run.config_text)}</pre></details>")
    return _section("run", "Run", "".join(parts))


def _training_section(data: ReportData) -> str:
    if data.metrics is None:
        return _section("training", "Training", "<p>The run folder holds no metrics.csv.</p>")
    intro = "Epoch means of every loss term as logged in metrics.csv (unweighted; the total is the weighted sum), and the weight (beta) each regulariser had."
    return _section("training", "Training", _figure(figures.training_figure(data.metrics), "training-curves"), intro)


def _latent_section(data: ReportData) -> str:
    n, k = data.n_particles, data.n_segments
    shown = figures.subsample(n, MAX_POINTS)
    sample = f"showing {len(shown):,} of {n:,} particles drawn at random; the grey density counts all of them" if len(shown) < n else f"all {n:,} particles"
    pcs = data.projections if data.projections.shape[1] >= 2 else np.column_stack([data.projections[:, 0], np.zeros(n)])
    names = ("PC1", "PC2") if data.projections.shape[1] >= 2 else ("PC1", "(one-dimensional latent)")
    marks = {f"PC{t.pc} traversal": pcs[t.particles, :2] for t in data.trajectories}
    if len(data.centres):
        marks["k-means centres"] = pcs[data.centres, :2]
    plots = [("latent-pca", figures.latent_figure(pcs[:, :2], data.labels, shown, marks, names, "latent means, PCA"))]
    if data.umap is not None:
        umap_marks = {f"PC{t.pc} traversal": data.umap[t.particles] for t in data.trajectories}
        if len(data.centres):
            umap_marks["k-means centres"] = data.umap[data.centres]
        plots.append(("latent-umap", figures.latent_figure(data.umap, data.labels, shown, umap_marks, ("UMAP1", "UMAP2"), "latent means, UMAP")))
    options = [{"label": f"k-means cluster ({int(data.labels.max()) + 1} clusters)", "kind": "cluster", "values": data.labels[shown].tolist()}]
    for segment in range(k):
        for quantity, values, unit in (("rotation angle", data.angle_deg, "°"), ("centre displacement", data.displacement_A, "Å")):
            column = np.round(values[shown, segment], 3)
            finite = np.isfinite(column)
            low, high = np.percentile(column[finite], [2, 98]) if finite.any() else (0.0, 1.0)
            options.append(
                {
                    "label": f"segment {segment} {quantity} ({unit})",
                    "kind": "continuous",
                    # JSON has no NaN: a particle without a value is null (plotly leaves it uncoloured).
                    "values": np.where(finite, column, None).tolist(),
                    "cmin": float(low),
                    "cmax": float(high),
                    "unit": unit,
                }
            )
    colourings = {"plots": [key for key, _ in plots], "trace": figures.LATENT_SCATTER_TRACE, "palette": figures.CLUSTER_COLOURS, "options": options}
    selector = "".join(f'<option value="{index}">{_e(option["label"])}</option>' for index, option in enumerate(options))
    controls = f'<div class="controls"><label for="latent-colour">Colour the particles by </label><select id="latent-colour">{selector}</select> <span class="note">{_e(sample)}; hover a point for its particle index.</span></div>'
    grid = "".join(f'<div class="cell">{_figure(fig, key)}</div>' for key, fig in plots)
    spectrum = _figure(figures.variance_figure(data.explained_variance_ratio), "latent-variance")
    data_json = json.dumps(colourings, separators=(",", ":"), allow_nan=False, default=float).replace("</", "<\\/")
    script = f'<script type="application/json" id="latent-colourings">{data_json}</script><script>{colour_selector_script()}</script>'
    body = controls + f'<div class="grid">{grid}<div class="cell">{spectrum}</div></div>' + script
    intro = "The latent mean of every particle projected on its principal components; the PC traversals (5th to 95th percentile, each point a real particle) and the k-means centres are marked."
    return _section("latent", "Latent space", body, intro)


def _ranges(table, rows: np.ndarray) -> str:
    """``A 1–120, B 5–9``: runs of consecutive rows of one chain, at most six shown."""
    runs: list[tuple[int, int]] = []
    for row in rows:
        if runs and row == runs[-1][1] + 1 and table["chain"].iat[row] == table["chain"].iat[runs[-1][1]]:
            runs[-1] = (runs[-1][0], row)
        else:
            runs.append((row, row))

    def label(first: int, last: int) -> str:
        chain, start, end = table["chain"].iat[first], table["residue_number"].iat[first], table["residue_number"].iat[last]
        return f"{chain} {start}" if first == last else f"{chain} {start}–{end}"

    shown = ", ".join(label(first, last) for first, last in runs[:6])
    return shown + (f", … ({len(runs) - 6} more)" if len(runs) > 6 else "")


def segment_rows(data: ReportData) -> list[list[str]]:
    """The segment table: colour, residues, ranges, mean membership, motion medians, strongest PC."""
    table, colours = data.segments, segment_colours(data.n_segments)
    segment = table["segment"].to_numpy()
    rows = []
    for k in range(data.n_segments):
        members = np.flatnonzero(segment == k)
        angle, displacement = data.angle_deg[:, k], data.displacement_A[:, k]
        correlations = data.motion_vs_pc[(data.motion_vs_pc["segment"] == k) & (data.motion_vs_pc["quantity"] == "angle_deg")]
        strongest = "–"
        if len(correlations) and correlations["spearman"].notna().any():
            best = correlations.loc[correlations["spearman"].abs().idxmax()]
            strongest = f"PC{int(best['pc'])} ({best['spearman']:+.2f})"
        rows.append(
            [
                f"{_swatch(colours[k])} segment {k}",
                f"{len(members):,}",
                _e(_ranges(table, members)) if len(members) else "(no residue)",
                _number(float(table["probability"].iloc[members].mean()) if len(members) else None),
                f"{_number(float(np.nanmedian(angle)))} / {_number(float(np.nanpercentile(angle, 90)))}",
                f"{_number(float(np.nanmedian(displacement)))} / {_number(float(np.nanpercentile(displacement, 90)))}",
                strongest,
            ]
        )
    fixed = np.flatnonzero(segment < 0)
    if len(fixed):
        rows.append([f"{_swatch(figures.FIXED_COLOUR)} fixed", f"{len(fixed):,}", _e(_ranges(table, fixed)), "–", "–", "–", "–"])
    return rows


def _segmentation_section(data: ReportData) -> str:
    header = ["segment", "residues", "ranges", "mean membership", "angle median / p90 (°)", "displacement median / p90 (Å)", "angle follows"]
    table = _table(header, segment_rows(data), "segments")
    fig = _figure(figures.segmentation_figure(data.segments, data.n_segments, data.rmsf_A), "segmentation-sequence")
    flexibility = " Below each strip: the residue's RMSF over all particles (flexibility.csv)." if data.rmsf_A is not None else ""
    intro = f"Each residue's most probable segment along each chain's sequence (segments.csv); hover for its membership.{flexibility}"
    return _section("segmentation", "Segmentation", table + fig, intro)


def _trajectories_section(data: ReportData) -> str:
    if not data.trajectories:
        return _section("trajectories", "PC trajectories", "<p>The analysis holds no PC traversal (pcK/trajectory files).</p>")
    stride = max(1, -(-len(data.segments) // MAX_TRACE_RESIDUES))
    thinned = f" Every {stride}th residue of {len(data.segments):,} is drawn." if stride > 1 else ""
    cells = []
    for trajectory in data.trajectories:
        fig = figures.trajectory_figure(trajectory, data.segments, data.n_segments, MAX_TRACE_RESIDUES)
        caption = f"PC{trajectory.pc}: {len(trajectory.particles)} structures, particles {', '.join(map(str, trajectory.particles.tolist()))}"
        cells.append(
            f'<div class="cell"><h3>PC{trajectory.pc} traversal</h3>{_figure(fig, f"trajectory-pc{trajectory.pc}")}<p class="note">{_e(caption)}</p></div>'
        )
    intro = (
        "The structure decoded at each point of each traversal (pcK/trajectory files), as a CA trace (P, or C1' when the file holds no P, "
        "for nucleotides) coloured by segment. Drag to rotate, scroll to zoom; the slider and the play button step through the traversal." + thinned
    )
    return _section("trajectories", "PC trajectories", f'<div class="grid wide">{"".join(cells)}</div>', intro)


def _motions_section(data: ReportData) -> str:
    parts = [_figure(figures.motion_distribution_figure(data.angle_deg, data.displacement_A), "motions-distribution")]
    parts.append("<h3>How the motions follow the PCs</h3>")
    parts.append(_figure(figures.motion_pc_figure(data.motion_vs_pc), "motions-vs-pc"))
    if data.trajectories:
        parts.append("<h3>Along the traversals</h3>")
        parts.append(_figure(figures.traversal_motion_figure(data.trajectories, data.angle_deg, data.displacement_A), "motions-traversals"))
    intro = (
        f"Each segment's rotation angle and the displacement of its centre, for every one of the {data.n_particles:,} particles (motions.csv); "
        "their Spearman correlation with the PCs (motions_vs_pc.csv) and their values along each traversal (pcK/motions.csv)."
    )
    return _section("motions", "Segment motions", "".join(parts), intro)


def _images_section(data: ReportData) -> str:
    encoded = data.images_base64()
    if encoded is None:
        return _section("images", "Images", "<p>The analysis holds no images.png.</p>")
    intro = "Particles as training compares them (shifted into the model frame, filtered and masked) and the model's images at their latent means; r is their correlation."
    return _section("images", "Images", f'<img class="picture" alt="observed and model images" src="data:image/png;base64,{encoded}">', intro)


def _evaluation_section(data: ReportData) -> str:
    summary = data.evaluation
    if summary is None:
        return ""
    references = summary["references"]
    rows = [["<b>this run</b>", "the decoded structure of every image", *(_number(summary["rmsd_A"].get(s)) for s in ("median", "mean", "p90"))]]
    for name, reference in references.items():
        rmsd = reference.get("rmsd_A", {})
        rows.append([_e(name.replace("_", " ")), _e(reference.get("description", "")), *(_number(rmsd.get(s)) for s in ("median", "mean", "p90"))])
    parts = [_table(["", "", "median (Å)", "mean (Å)", "90th percentile (Å)"], rows)]
    limit = references.get("rigid_limit", {})
    if limit:
        note = f" {limit['note']}." if limit.get("note") else ""
        boundaries = " ".join(map(str, limit.get("boundaries", [])))
        parts.append(f"<p class=note>Rigid limit: {limit.get('n_segments')} segments with boundaries at residue indices {_e(boundaries)}.{_e(note)}</p>")
    agreement = summary.get("map_agreement")
    if agreement:
        names = [name for name in ("run", *references) if name in agreement]
        rows = [
            [_e(name.replace("_", " ")), _number(agreement[name]["auc"]["median"], 3), _number(agreement[name]["resolution_A_at_fsc_0.5"]["median"], 1)]
            for name in names
        ]
        parts.append(f"<h3>Map agreement (FSC on {agreement['n_images']} images, Nyquist {agreement['nyquist_A']:.1f} Å)</h3>")
        parts.append(_table(["", "median AUC", "median resolution at FSC 0.5 (Å)"], rows))
    if summary.get("by_conformation_bin"):
        parts.append(_figure(figures.evaluation_figure(summary), "evaluation-rmsd"))
    where = f" ({_e(data.evaluation_path)})" if data.evaluation_path is not None else ""
    intro = f"Per-image CA RMSD without superposition against the simulation's true structures, from cryodomain evaluate's summary.json{where}, next to its references."
    return _section("evaluation", "Accuracy against the truth", "".join(parts), intro)


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------


def render_report(data: ReportData, sources: dict[str, Path] | None = None) -> str:
    """The whole page as one string (plotly.js inlined once)."""
    sections = [
        _run_section(data),
        _training_section(data),
        _latent_section(data),
        _segmentation_section(data),
        _trajectories_section(data),
        _motions_section(data),
        _images_section(data),
        _evaluation_section(data),
    ]
    present = [(key, title) for key, title in SECTIONS if any(section.startswith(f'<section id="{key}"') for section in sections)]
    nav = "".join(f'<a href="#{key}">{_e(title)}</a>' for key, title in present)
    written = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    origin = ", ".join(f"{name} {_e(path)}" for name, path in (sources or {}).items())
    subtitle = f"{data.n_particles:,} particles, {data.n_segments} segments, {len(data.segments):,} residues. Written {written} by cryodomain {__version__}" + (
        f" from {origin}." if origin else "."
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>cryodomain report: {_e(data.run.name)}</title><style>{PAGE_STYLE}</style>"
        f"<script>{plotly.offline.get_plotlyjs()}</script></head><body>"
        f"<header><h1>cryodomain report: {_e(data.run.name)}</h1><p>{subtitle}</p><nav>{nav}</nav></header>"
        f"<main>{''.join(sections)}</main></body></html>\n"
    )
