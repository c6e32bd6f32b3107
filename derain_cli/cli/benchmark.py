"""`derain benchmark`: methods x paired test sets -> quality, speed, memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from derain_cli.cli.common import exit_codes, say, stdout_console


def benchmark(
    data: Annotated[list[Path], typer.Argument(help="Paired test folders (rain/ + norain/, ...), e.g. ../shared/data/rain100l/test.")],
    methods: Annotated[list[str], typer.Option("-m", "--method", help="Method or method.tag; repeat for several.")] = ["lpnet"],  # noqa: B006
    weights: Annotated[str | None, typer.Option("-w", "--weights", help="Checkpoint file for a single --method.")] = None,
    channel: Annotated[str, typer.Option(help="y (the papers' convention) or rgb.")] = "y",
    quantize: Annotated[str, typer.Option(help="round (as derain writes images) or truncate (as most authors' test code does).")] = "round",
    published: Annotated[bool, typer.Option("--published", help="Show published / reference scores beside ours, and also score the authors' released checkpoints trained for each data set (METHOD.authors-DATASET, downloaded on first use).")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto, fp32, fp16, bf16.")] = "auto",
    tile: Annotated[int, typer.Option(help="Tile size; 0 = whole images (the papers' protocol).")] = 0,
    limit: Annotated[int | None, typer.Option(help="Score only the first N pairs of each set.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write summaries and per-image scores as JSON.")] = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Write per-image scores as CSV.")] = None,
    markdown_path: Annotated[Path | None, typer.Option("--markdown", help="Write the summary table as Markdown.")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never use the network.")] = False,
    score_input: Annotated[bool, typer.Option("--input", help="Also score the rainy inputs themselves (the 'no deraining' row).")] = False,
) -> None:
    """Score methods on paired test sets: PSNR/SSIM per image and mean, time per image, MP/s,
    peak memory, parameter count. States the metric convention it used."""
    with exit_codes():
        _benchmark(data, methods, weights, channel, quantize, published, device, precision, tile, limit,
                   json_path, csv_path, markdown_path, offline, score_input)


def _benchmark(data, methods, weights, channel, quantize, published, device, precision, tile, limit,
               json_path, csv_path, markdown_path, offline, score_input) -> None:
    from derain_cli.api import load
    from derain_cli.evaluation.benchmark import CONVENTION, QUANTIZE, convention, evaluate, evaluate_input, published_scores
    from derain_cli.errors import UsageError

    if channel not in CONVENTION:
        raise UsageError(f"channel must be 'y' or 'rgb', got '{channel}'")
    if quantize not in QUANTIZE:
        raise UsageError(f"quantize must be 'round' or 'truncate', got '{quantize}'")
    if weights and len(methods) != 1:
        raise UsageError("--weights needs exactly one --method")
    results = [evaluate_input(folder, channel, limit) for folder in data] if score_input else []
    for r in results:
        say(f"rainy input on {r.dataset}: {r.psnr:.2f} dB / {r.ssim:.4f} over {len(r.images)} pairs")
    for method, checkpoint, folders in _runs(methods, weights, data, published):
        restorer = load(method, checkpoint, device=device, precision=precision, tile=tile, offline=offline)
        for folder in folders:
            results.append(evaluate(restorer, folder, channel, limit, quantize))
            r = results[-1]
            say(f"{r.method} ({r.weights}) on {r.dataset}: {r.psnr:.2f} dB / {r.ssim:.4f} over {len(r.images)} pairs")
    reference = published_scores(channel) if published else {}
    headers, rows = _table(results, reference)
    rule = convention(channel, quantize)
    _print(headers, rows, rule)
    if markdown_path:
        markdown_path.write_text(_markdown(headers, rows, rule, results, reference))
    if json_path:
        json_path.write_text(json.dumps({"convention": rule, "results": [
            {**r.summary(), "images": [vars(i) for i in r.images]} for r in results]}, indent=2))
    if csv_path:
        lines = ["method,weights,dataset,image,psnr,ssim,seconds"]
        lines += [f"{r.method},{r.weights},{r.dataset},{i.name},{i.psnr:.4f},{i.ssim:.5f},{i.seconds:.4f}"
                  for r in results for i in r.images]
        csv_path.write_text("\n".join(lines) + "\n")


def _runs(methods, weights, data, published) -> list[tuple[str, str | None, list[Path]]]:
    """(method, --weights, folders) to score: the chosen methods on every folder, then with
    --published the authors' checkpoints trained for each folder's data set."""
    from derain_cli.evaluation.benchmark import authors_checkpoints
    from derain_cli.weights.manifest import split_name

    runs = [(method, weights, data) for method in methods]
    if published:
        chosen = {"{}.{}".format(*split_name(m)) for m in methods}
        for name, folders in authors_checkpoints(data).items():
            if name not in chosen:
                say(f"--published: also scoring the authors' checkpoint {name} on {', '.join(map(str, folders))}")
                runs.append((name, None, folders))
    return runs


def _table(results, reference):
    from derain_cli.evaluation.benchmark import INPUT

    headers = ["method", "weights", "dataset", "pairs", "PSNR", "SSIM"]
    if reference:
        headers.append("published")
    headers += ["s/image", "MP/s", "peak RSS MB", "params"]
    rows = []
    for r in results:
        row = [r.method, r.weights, r.dataset, str(len(r.images)), f"{r.psnr:.2f}", f"{r.ssim:.4f}"]
        if reference:
            ref = reference.get((r.method, r.dataset))
            row.append(f"{ref['psnr']:.2f} / {ref['ssim']:.4f}" if ref else "-")
        if r.method == INPUT:  # nothing ran: no speed, memory or parameters
            row += ["-"] * 4
        else:
            row += [f"{r.seconds_per_image:.3f}", f"{r.megapixels_per_second:.2f}", f"{r.peak_rss_mb:.0f}",
                    f"{r.parameters:,}"]
        rows.append(row)
    return headers, rows


def _print(headers, rows, convention) -> None:
    """The table goes to stdout (it is the result), wide enough not to wrap in a log."""
    from rich.table import Table

    table = Table(title="derain benchmark", caption=convention)
    for h in headers:
        table.add_column(h)
    for row in rows:
        table.add_row(*row)
    stdout_console().print(table)


def _markdown(headers, rows, convention, results, reference) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", f"Convention: {convention}.", f"Device: {results[0].device}." if results else ""]
    sources = {(r.method, r.dataset) for r in results} & set(reference)
    if sources:
        lines.append("Published / reference scores: " + "; ".join(
            f"{m} on {d}: {reference[(m, d)]['source']}" for m, d in sorted(sources)) + ".")
    return "\n".join(lines) + "\n"
