"""The report's PNG figures, drawn on matplotlib's Agg canvas without pyplot's global state."""

from __future__ import annotations

from pathlib import Path

from harness.reporting.names import CURVE_NAMES, ROW_NAMES
from harness.reporting.stats import Z95


def figure(width: float = 7.0, height: float = 4.0):  # -> (Figure, Axes); Agg canvas, no pyplot state
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def panels(width: float, height: float, n: int):  # -> (Figure, [Axes]); side by side
    fig, _ = figure(width, height)
    fig.clear()
    return fig, [fig.add_subplot(1, n, i + 1) for i in range(n)]


def save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})


def plot_progressive(curves: dict[str, list[tuple[int, bool]]], path: Path) -> None:
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    fig, ax = figure()
    colors = {"trained": "tab:blue", "frozen": "tab:gray", "zero_shot": "tab:orange"}
    zorder = {"trained": 3, "frozen": 2, "zero_shot": 1}
    for name, pts in curves.items():
        x = np.array([q for q, _ in pts])
        k = np.cumsum([c for _, c in pts])
        n = np.arange(1, len(pts) + 1)
        p = k / n
        z2 = Z95 * Z95
        denom = 1 + z2 / n
        center = (p + z2 / (2 * n)) / denom
        half = Z95 * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
        ax.plot(x, 100 * p, color=colors[name], label=CURVE_NAMES[name], lw=1.8, zorder=zorder[name] + 3)
        ax.fill_between(
            x,
            100 * np.clip(center - half, 0, 1),
            100 * np.clip(center + half, 0, 1),
            color=colors[name],
            alpha=0.15,
            lw=0,
            zorder=zorder[name],
        )
    ax.set_xlabel("training questions seen")
    ax.set_ylabel("progressive accuracy (%)")
    ax.set_ylim(-2, 102)  # a curve at 0% or 100% stays visible off the axis
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Progressive validation accuracy (95% Wilson bands)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    save(fig, path)


def plot_difference(points: list[dict], path: Path) -> None:
    """The running paired difference trained − frozen (points: `stats.paired_difference` after each question)."""
    fig, ax = figure(7.0, 3.2)
    x = list(range(1, len(points) + 1))
    ax.plot(x, [100 * p["delta"] for p in points], color="tab:blue", lw=1.8)
    ax.fill_between(x, [100 * p["ci"][0] for p in points], [100 * p["ci"][1] for p in points], color="tab:blue",
                    alpha=0.15, lw=0)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("training questions seen")
    ax.set_ylabel("trained − frozen (points)")
    ax.set_title("Paired difference trained − frozen (95% band)")
    ax.grid(alpha=0.3)
    save(fig, path)


def plot_dpo_steps(curves: dict[str, list[dict]], path: Path, window: int = 8) -> None:
    """Each agent's reward accuracy and margin over its optimizer steps (means over `window` steps)."""
    fig, (left, right) = panels(7.0, 3.4, 2)
    for agent, steps in curves.items():
        for ax, key in ((left, "accuracy"), (right, "margin")):
            values = [s[key] for s in steps if isinstance(s.get(key), (int, float))]
            rolling = [sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
                       for i in range(len(values))]
            ax.plot(range(1, len(rolling) + 1), rolling, label=agent, lw=1.6)
    left.set_title(f"reward accuracy (mean of {window} steps)")
    right.set_title(f"reward margin (mean of {window} steps)")
    for ax in (left, right):
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    save(fig, path)


def plot_pairs(by_node: dict[str, dict[str, int]], agents: list[str], path: Path) -> None:
    """Bars of pairs per node index (then the labels without one), one bar per agent."""
    fig, ax = figure(6.0, 3.5)
    rows = list(by_node)
    width = 0.8 / max(1, len(agents))
    for j, agent in enumerate(agents):
        ax.bar([i + j * width for i in range(len(rows))], [by_node[r].get(agent, 0) for r in rows], width, label=agent)
    ax.set_xticks([i + width * (len(agents) - 1) / 2 for i in range(len(rows))], rows)
    ax.set_xlabel("index of the node (pair_nodes kind:index)")
    ax.set_ylabel("DPO pairs")
    ax.set_title("Pairs by node")
    ax.legend()
    save(fig, path)


def plot_time(phases: dict[str, float], path: Path) -> None:
    fig, ax = figure(6.0, 0.6 + 0.45 * max(1, len(phases)))
    names = [k.removesuffix("_seconds") for k in phases]
    ax.barh(names, list(phases.values()), color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlabel("seconds (online stage)")
    ax.set_title("Where the time went")
    save(fig, path)


def plot_table1(data: dict, path: Path) -> None:
    fig, ax = figure(7.0, 4.0)
    tasks, rows = data["tasks"], data["rows"]
    width = 0.8 / max(1, len(rows))
    for j, r in enumerate(rows):
        xs, ys, errs, paper_x, paper_y = [], [], [[], []], [], []
        for i, task in enumerate(tasks):
            c = r["cells"].get(task)
            if not c:
                continue
            x = i + j * width
            xs.append(x)
            ys.append(100 * c["value"])
            lo, hi = c["ci"] or (c["value"], c["value"])
            errs[0].append(100 * (c["value"] - lo))
            errs[1].append(100 * (hi - c["value"]))
            if c["paper"] is not None:
                paper_x.append(x)
                paper_y.append(c["paper"])
        ax.bar(xs, ys, width, yerr=errs, capsize=2, label=ROW_NAMES.get(r["model"], r["model"]))
        if paper_x:
            ax.scatter(
                paper_x,
                paper_y,
                marker="_",
                s=300,
                color="black",
                zorder=3,
                label="paper" if j == 0 else None,
            )
    ax.set_xticks([i + width * (len(rows) - 1) / 2 for i in range(len(tasks))], tasks)
    ax.set_ylabel("accuracy (%)")
    with_paper = data.get("paper") is not None
    ax.set_title("Measured (bars, 95% CI)" + (" vs paper (black marks)" if with_paper else ""))
    ax.legend(fontsize=7)
    save(fig, path)
