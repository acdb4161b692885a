"""The report's interactive figures (plotly), one function per figure.

Each returns a ``plotly.graph_objects.Figure``; :mod:`cryodomain.workflows.report` puts them on the
page with one copy of plotly.js. Segment k has the colour ``plots.segment_colours(K)[k]``
everywhere (pictures, ChimeraX, this report); residues outside every segment are grey. Arrays go
into the page as float32 (plotly writes numpy arrays as base64 typed arrays), which keeps a report
of 100,000 particles a few MB.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cryodomain.plots import segment_colours
from cryodomain.workflows.report_data import Trajectory

FIXED_COLOUR = "#c8c8c8"
# k-means clusters: one qualitative palette, cycled beyond its length (the same list in the page's JS).
CLUSTER_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
TEMPLATE = "plotly_white"
# The scatter trace of a latent figure (after the density): the one the colour selector restyles.
LATENT_SCATTER_TRACE = 1
# Particles from which the latent figures draw a density under the points.
DENSITY_FROM = 2000


def _layout(fig: go.Figure, height: int, **kwargs) -> go.Figure:
    fig.update_layout(template=TEMPLATE, height=height, margin={"l": 60, "r": 30, "t": 50, "b": 50}, font={"size": 13}, **kwargs)
    return fig


def cluster_colours(labels: np.ndarray) -> list[str]:
    """The colour of each cluster label ``(N,)``."""
    return [CLUSTER_COLOURS[int(label) % len(CLUSTER_COLOURS)] for label in labels]


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def training_figure(metrics: pd.DataFrame) -> go.Figure:
    """Every logged loss term per epoch, one panel each, and the weights (betas) in the last panel.

    Args:
        metrics: metrics.csv (columns epoch, total, correlation, the terms, beta_<term>, seconds).
    """
    betas = [column for column in metrics.columns if column.startswith("beta_")]
    terms = [column for column in metrics.columns if column not in ("epoch", "seconds") and column not in betas]
    titles = [*terms, "weights (beta)"] if betas else terms
    cols = 3
    rows = -(-len(titles) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.08, vertical_spacing=0.16 / max(rows - 1, 1) + 0.06)
    epochs = metrics["epoch"].to_numpy()
    for index, name in enumerate(terms):
        fig.add_trace(
            go.Scatter(x=epochs, y=metrics[name].to_numpy(), mode="lines+markers", marker={"size": 4}, name=name, showlegend=False),
            row=index // cols + 1,
            col=index % cols + 1,
        )
    for name in betas:
        index = len(terms)
        fig.add_trace(
            go.Scatter(x=epochs, y=metrics[name].to_numpy(), mode="lines", name=name.removeprefix("beta_"), legendgroup="beta"),
            row=index // cols + 1,
            col=index % cols + 1,
        )
    fig.update_xaxes(title_text="epoch", title_standoff=4, dtick=1 if len(epochs) <= 10 else None)
    return _layout(fig, 230 * rows + 80, legend={"title": {"text": "beta of "}, "orientation": "h", "y": -0.06 - 0.1 / rows, "font": {"size": 12}})


# ---------------------------------------------------------------------------------------------
# Latent space
# ---------------------------------------------------------------------------------------------


def subsample(n: int, most: int, seed: int = 0) -> np.ndarray:
    """Sorted particle rows shown as points: all of them, or ``most`` drawn at random."""
    if n <= most:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, most, replace=False))


def latent_figure(
    points: np.ndarray,
    labels: np.ndarray,
    shown: np.ndarray,
    marks: dict[str, np.ndarray],
    axis_names: tuple[str, str],
    title: str,
) -> go.Figure:
    """The latent space as a density of every particle and a scatter of the shown ones.

    Args:
        points: ``(N, 2)`` coordinates of every particle (PC1/PC2 or UMAP1/UMAP2).
        labels: ``(N,)`` k-means clusters (the scatter's first colouring).
        shown: ``(S,)`` rows drawn as points (hover shows the particle index).
        marks: name -> ``(M, 2)`` points drawn over the scatter (traversals as lines, centres).
        axis_names: the two axis titles.
        title: the figure title.
    """
    counts, x_edges, y_edges = np.histogram2d(points[:, 0], points[:, 1], bins=60)
    many = len(points) > DENSITY_FROM
    fig = go.Figure()
    # The density of all particles, light enough to read the points over it (an empty trace when
    # there are too few particles for a density, so that the scatter stays trace 1).
    fig.add_trace(
        go.Heatmap(
            x=((x_edges[1:] + x_edges[:-1]) / 2).astype(np.float32),
            y=((y_edges[1:] + y_edges[:-1]) / 2).astype(np.float32),
            z=np.where(counts > 0, np.log10(np.maximum(counts, 1)) + 0.3, np.nan).T.astype(np.float32) if many else None,
            colorscale="Greys",
            showscale=False,
            hoverinfo="skip",
            opacity=0.55,
            name="density",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=points[shown, 0].astype(np.float32),
            y=points[shown, 1].astype(np.float32),
            mode="markers",
            marker={"size": 4 if len(shown) > 2000 else 8, "opacity": 0.75, "color": cluster_colours(labels[shown]), "line": {"width": 0}},
            customdata=np.stack([shown, labels[shown]], axis=1).astype(np.int32),
            hovertemplate="particle %{customdata[0]}<br>cluster %{customdata[1]}<br>"
            + f"{axis_names[0]} %{{x:.3f}}<br>{axis_names[1]} %{{y:.3f}}<extra></extra>",
            name="particles",
            showlegend=False,
        )
    )
    for name, xy in marks.items():
        centres = "centre" in name
        fig.add_trace(
            go.Scatter(
                x=xy[:, 0],
                y=xy[:, 1],
                mode="markers" if centres else "lines+markers",
                marker={"size": 11 if centres else 7, "symbol": "x" if centres else "circle", "color": "black" if centres else None, "line": {"width": 1}},
                name=name,
                hovertemplate=f"{name}<br>{axis_names[0]} %{{x:.3f}}<br>{axis_names[1]} %{{y:.3f}}<extra></extra>",
            )
        )
    fig.update_xaxes(title_text=axis_names[0])
    fig.update_yaxes(title_text=axis_names[1])
    return _layout(fig, 520, title={"text": title, "font": {"size": 15}}, legend={"orientation": "h", "y": -0.15})


def variance_figure(ratio: np.ndarray) -> go.Figure:
    """Explained variance ratio per PC."""
    pcs = [f"PC{pc + 1}" for pc in range(len(ratio))]
    fig = go.Figure(go.Bar(x=pcs, y=ratio, marker_color="#4c72b0", hovertemplate="%{x}: %{y:.1%}<extra></extra>"))
    fig.update_yaxes(title_text="explained variance", tickformat=".0%")
    return _layout(fig, 300, title={"text": "PCA spectrum of the latent means", "font": {"size": 15}})


# ---------------------------------------------------------------------------------------------
# Segmentation
# ---------------------------------------------------------------------------------------------


def segmentation_figure(segments: pd.DataFrame, n_segments: int, rmsf_A: np.ndarray | None) -> go.Figure:
    """The segmentation along each chain's sequence: one panel per chain, a bar per residue as high
    as its membership and coloured by its segment (grey: outside every segment), and the residue
    flexibility (RMSF, right axis) as a line when known.

    Args:
        segments: segments.csv (chain, residue_number, insertion_code, residue_name, segment, probability).
        n_segments: K.
        rmsf_A: ``(R,)`` RMSF per residue, Å, or None.
    """
    chains = list(dict.fromkeys(segments["chain"].tolist()))
    titles = [f"chain {chain} ({int((segments['chain'] == chain).sum())} residues)" for chain in chains]
    fig = make_subplots(
        rows=len(chains), cols=1, subplot_titles=titles, vertical_spacing=min(0.5 / len(chains), 0.12), specs=[[{"secondary_y": True}]] * len(chains)
    )
    colours = np.array([*segment_colours(n_segments), FIXED_COLOUR])  # index -1: fixed
    for row, chain in enumerate(chains, start=1):
        rows = np.flatnonzero(segments["chain"].to_numpy() == chain)
        table = segments.iloc[rows]
        numbers = table["residue_number"].to_numpy()
        segment = table["segment"].to_numpy()
        fixed = segment < 0
        hover = [
            f"chain {chain} {name} {number}{icode}<br>{'segment ' + str(k) if k >= 0 else 'fixed'}<br>membership {p:.2f}"
            + (f"<br>RMSF {rmsf_A[index]:.2f} Å" if rmsf_A is not None else "")
            for name, number, icode, k, p, index in zip(table["residue_name"], numbers, table["insertion_code"], segment, table["probability"], rows)
        ]
        fig.add_trace(
            go.Bar(
                x=numbers,
                y=np.where(fixed, 1.0, table["probability"].to_numpy()).astype(np.float32),
                width=1.0,
                marker={"color": colours[segment].tolist(), "line": {"width": 0}},
                hovertext=hover,
                hoverinfo="text",
                showlegend=False,
                name=f"chain {chain}",
            ),
            row=row,
            col=1,
        )
        if rmsf_A is not None:
            fig.add_trace(
                go.Scatter(
                    x=numbers, y=rmsf_A[rows].astype(np.float32), mode="lines", line={"color": "#222", "width": 1.3}, hoverinfo="skip", showlegend=False
                ),
                row=row,
                col=1,
                secondary_y=True,
            )
            fig.update_yaxes(title_text="RMSF (Å)", title_font={"size": 11}, rangemode="tozero", showgrid=False, row=row, col=1, secondary_y=True)
        fig.update_yaxes(title_text="membership", title_font={"size": 11}, range=[0, 1.05], row=row, col=1, secondary_y=False)
    fig.update_layout(bargap=0)
    fig.update_xaxes(title_text="residue number", title_standoff=2, row=len(chains), col=1)
    return _layout(fig, 80 + 190 * len(chains))


# ---------------------------------------------------------------------------------------------
# Trajectories
# ---------------------------------------------------------------------------------------------


def _segment_paths(chain_ids: np.ndarray, segment: np.ndarray, n_segments: int, keep: np.ndarray) -> list[np.ndarray]:
    """Per segment (fixed residues first), the residue rows of its polyline, -1 where the line breaks.

    Each bond between consecutive kept residues of a chain is drawn once, in the colour of the
    first residue's segment, so the trace is unbroken where segments meet.
    """
    paths = []
    for k in range(-1, n_segments):
        rows: list[int] = []
        for position, residue in enumerate(keep):
            if segment[residue] != k:
                continue
            if not rows or rows[-1] != residue:
                # A new run of the segment: break the line after the previous one.
                rows += [-1, int(residue)] if rows else [int(residue)]
            following = keep[position + 1] if position + 1 < len(keep) else None
            if following is not None and chain_ids[following] == chain_ids[residue]:
                rows.append(int(following))
        paths.append(np.array(rows, dtype=np.int64))
    return paths


def _path_coords(frame: np.ndarray, path: np.ndarray) -> np.ndarray:
    """``(P, 3)`` float32 coordinates along ``path``, NaN at the breaks (plotly leaves a gap)."""
    coords = frame[np.maximum(path, 0)].astype(np.float32)
    coords[path < 0] = np.nan
    return coords


def trajectory_figure(trajectory: Trajectory, segments: pd.DataFrame, n_segments: int, max_residues: int = 4000) -> go.Figure:
    """The trace coloured by segment, one frame per traversal point, with a slider and play button.

    Args:
        trajectory: the PC traversal.
        segments: segments.csv.
        n_segments: K.
        max_residues: draw every n-th residue beyond this many (the page says so).
    """
    chain_ids = segments["chain"].to_numpy()
    segment = segments["segment"].to_numpy()
    stride = max(1, -(-len(segments) // max_residues))
    keep = np.arange(0, len(segments), stride)
    paths = _segment_paths(chain_ids, segment, n_segments, keep)
    colours = [FIXED_COLOUR, *segment_colours(n_segments)]
    labels = [f"{c} {n} {number}{i}" for c, n, number, i in zip(chain_ids, segments["residue_name"], segments["residue_number"], segments["insertion_code"])]
    fig = go.Figure()
    for k, path in enumerate(paths):
        xyz = _path_coords(trajectory.coords[0], path)
        fig.add_trace(
            go.Scatter3d(
                x=xyz[:, 0],
                y=xyz[:, 1],
                z=xyz[:, 2],
                mode="lines+markers",
                line={"color": colours[k], "width": 6},
                marker={"color": colours[k], "size": 2.5},
                text=[labels[row] if row >= 0 else "" for row in path],
                hovertemplate="%{text}<extra>" + ("fixed" if k == 0 else f"segment {k - 1}") + "</extra>",
                name="fixed" if k == 0 else f"segment {k - 1}",
                showlegend=bool(len(path)),  # a segment that is no residue's most probable one has nothing to draw
            )
        )
    frames = []
    for point, coords in enumerate(trajectory.coords):
        data = [go.Scatter3d(x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2]) for xyz in (_path_coords(coords, path) for path in paths)]
        frames.append(go.Frame(data=data, traces=list(range(len(paths))), name=str(point + 1)))
    fig.frames = frames
    immediate = {"mode": "immediate", "frame": {"duration": 0, "redraw": True}, "transition": {"duration": 0}}
    steps = [{"method": "animate", "label": f"{point + 1}", "args": [[str(point + 1)], immediate]} for point in range(len(trajectory.coords))]
    # One cube around every frame, so that the view does not rescale while playing.
    low, high = np.nanmin(trajectory.coords, axis=(0, 1)), np.nanmax(trajectory.coords, axis=(0, 1))
    centre, half = (low + high) / 2, float((high - low).max()) / 2 + 2.0
    axes = {name: {"range": [float(centre[i] - half), float(centre[i] + half)], "title": {"text": f"{name} (Å)"}} for i, name in enumerate("xyz")}
    return _layout(
        fig,
        620,
        scene={"xaxis": axes["x"], "yaxis": axes["y"], "zaxis": axes["z"], "aspectmode": "cube"},
        legend={"orientation": "h", "y": 1.02, "x": 0},
        updatemenus=[
            {
                "type": "buttons",
                "direction": "left",
                "x": 0.0,
                "y": 0.02,
                "xanchor": "left",
                "yanchor": "top",
                "pad": {"r": 10, "t": 10},
                "buttons": [
                    {
                        "label": "▶ play",
                        "method": "animate",
                        "args": [None, {"frame": {"duration": 350, "redraw": True}, "fromcurrent": True, "transition": {"duration": 0}}],
                    },
                    {"label": "❚❚ pause", "method": "animate", "args": [[None], immediate]},
                ],
            }
        ],
        sliders=[
            {
                "active": 0,
                "x": 0.22,
                "len": 0.76,
                "y": 0.02,
                "yanchor": "top",
                "pad": {"t": 10},
                "currentvalue": {"prefix": f"PC{trajectory.pc} point ", "xanchor": "right", "font": {"size": 13}},
                "steps": steps,
            }
        ],
    )


# ---------------------------------------------------------------------------------------------
# Motions and evaluation
# ---------------------------------------------------------------------------------------------


def motion_distribution_figure(angle_deg: np.ndarray, displacement_A: np.ndarray) -> go.Figure:
    """Histograms of every segment's rotation angle and centre displacement over all particles.

    Args:
        angle_deg: ``(N, K)`` degrees.
        displacement_A: ``(N, K)`` Å.
    """
    colours = segment_colours(angle_deg.shape[1])
    fig = make_subplots(rows=1, cols=2, subplot_titles=["rotation angle per particle", "centre displacement per particle"], horizontal_spacing=0.1)
    for col, values in ((1, angle_deg), (2, displacement_A)):
        finite = values[np.isfinite(values)]
        edges = np.histogram_bin_edges(finite, bins=50) if finite.size else np.linspace(0, 1, 51)
        for k in range(values.shape[1]):
            counts, _ = np.histogram(values[:, k][np.isfinite(values[:, k])], bins=edges)
            fig.add_trace(
                go.Scatter(
                    x=((edges[1:] + edges[:-1]) / 2).astype(np.float32),
                    y=counts.astype(np.int32),
                    mode="lines",
                    line={"shape": "hvh", "color": colours[k], "width": 2},
                    name=f"segment {k}",
                    legendgroup=f"segment {k}",
                    showlegend=col == 1,
                    hovertemplate=f"segment {k}<br>%{{x:.2f}}: %{{y}} particles<extra></extra>",
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(title_text="angle (°)", row=1, col=1)
    fig.update_xaxes(title_text="displacement (Å)", row=1, col=2)
    fig.update_yaxes(title_text="particles", row=1, col=1)
    return _layout(fig, 400)


def motion_pc_figure(table: pd.DataFrame) -> go.Figure:
    """Spearman correlation of each segment's motion with each PC (motions_vs_pc.csv)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["rotation angle vs PC", "displacement vs PC"], horizontal_spacing=0.12)
    for col, quantity in ((1, "angle_deg"), (2, "displacement_A")):
        grid = table[table["quantity"] == quantity].pivot(index="segment", columns="pc", values="spearman")
        fig.add_trace(
            go.Heatmap(
                x=[f"PC{pc}" for pc in grid.columns],
                y=[f"segment {k}" for k in grid.index],
                z=grid.to_numpy(),
                zmin=-1,
                zmax=1,
                colorscale="RdBu_r",
                texttemplate="%{z:.2f}",
                showscale=col == 2,
                colorbar={"title": {"text": "Spearman"}},
                hovertemplate="%{y}, %{x}: Spearman %{z:.3f}<extra></extra>",
            ),
            row=1,
            col=col,
        )
    return _layout(fig, 120 + 40 * max(table["segment"].nunique(), 3))


def traversal_motion_figure(trajectories: list[Trajectory], angle_deg: np.ndarray, displacement_A: np.ndarray) -> go.Figure:
    """Each segment's angle and displacement at the points of each PC traversal (pcK/motions.csv)."""
    colours = segment_colours(angle_deg.shape[1])
    fig = make_subplots(
        rows=2, cols=len(trajectories), subplot_titles=[f"along PC{t.pc}" for t in trajectories] + [""] * len(trajectories), vertical_spacing=0.12
    )
    for col, trajectory in enumerate(trajectories, start=1):
        for row, values in ((1, angle_deg), (2, displacement_A)):
            for k in range(values.shape[1]):
                fig.add_trace(
                    go.Scatter(
                        x=trajectory.coordinate,
                        y=values[trajectory.particles, k],
                        mode="lines+markers",
                        line={"color": colours[k]},
                        name=f"segment {k}",
                        legendgroup=f"segment {k}",
                        showlegend=row == 1 and col == 1,
                        customdata=trajectory.particles,
                        hovertemplate=f"segment {k}<br>particle %{{customdata}}<br>PC{trajectory.pc} %{{x:.3f}}: %{{y:.2f}}<extra></extra>",
                    ),
                    row=row,
                    col=col,
                )
        fig.update_xaxes(title_text=f"PC{trajectory.pc} coordinate", row=2, col=col)
    fig.update_yaxes(title_text="angle (°)", row=1, col=1)
    fig.update_yaxes(title_text="displacement (Å)", row=2, col=1)
    return _layout(fig, 520)


def evaluation_figure(summary: dict) -> go.Figure:
    """Median per-image RMSD of the run and its references along the conformations (summary.json)."""
    bins = summary.get("by_conformation_bin", [])
    labels = [f"{b['conformations'][0]}" if b["conformations"][0] == b["conformations"][1] else "{}–{}".format(*b["conformations"]) for b in bins]
    fig = go.Figure()
    styles = {"run": ("#d62728", "solid"), "baseline": ("#7f7f7f", "dot"), "best_single": ("#1f77b4", "dash"), "rigid_limit": ("#2ca02c", "dashdot")}
    for name, (colour, dash) in styles.items():
        fig.add_trace(
            go.Scatter(
                x=labels,
                y=[b.get(f"{name}_median_A") for b in bins],
                mode="lines+markers",
                name=name.replace("_", " "),
                line={"color": colour, "dash": dash, "width": 3 if name == "run" else 2},
            )
        )
    fig.update_xaxes(title_text="true conformation(s)", type="category")
    fig.update_yaxes(title_text="median RMSD (Å)", rangemode="tozero")
    return _layout(fig, 380, title={"text": "per-image RMSD against the truth, by conformation", "font": {"size": 15}})
