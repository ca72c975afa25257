"""report.md and a self-contained report.html for one sweep: the question, the answer, the evidence, the failures."""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Union

import pandas as pd
import yaml

from src.analyze import _markdown, effects, maximize, state_counts, study_info, top_trials, value_column
from src.files import write_text

Block = Union[str, pd.DataFrame, Path, tuple]  # text, table, image, ("code", text)


def sections(trials: pd.DataFrame, folder: Path, images: list[Path]) -> list[tuple[str, list[Block]]]:
    info = study_info(folder)
    study, best = info["study"] or {}, info["best"] or {}
    name = study.get("study_name", folder.name)
    question: list[Block] = []
    if study:
        space = pd.DataFrame({"parameter": list(study["search_space"]), "searched over": list(study["search_space"].values())})
        question += [f"Objective: {', '.join(f'{d} {m}' for m, d in study['objectives'].items())}. "
                     f"Budget: {study['n_trials']} trials. Sampler: {study['sampler']} (seed {study['seed']}). "
                     f"Pruner: {study['pruner']} {study.get('pruner_settings') or ''}.", space]
        if study.get("fixed"):
            question.append("Fixed for every trial: " + ", ".join(f"`{o}`" for o in study["fixed"]))
    else:
        question.append("No study.yaml beside trials.csv: the search space is not recorded.")

    answer: list[Block] = []
    if best:
        test = best.get("test") or {}
        value = next(v for k, v in best.items() if k not in ("trial", "params", "command", "test", "run_dir", "config"))
        answer.append(f"Best trial #{best['trial']}: validation accuracy {value:.4f}"
                      + (f", test accuracy {test['test_accuracy']:.4f} (test loss {test['test_loss']:.4f}), "
                         f"measured once after the search" if test.get("test_accuracy") is not None else "") + ".")
        answer.append(pd.DataFrame({"parameter": list(best["params"]), "value": list(best["params"].values())}))
        answer += ["Replay it:", ("code", best["command"]),
                   "Its full configuration:", ("code", yaml.safe_dump(best["config"], sort_keys=False))]
    else:
        answer.append("No trial completed.")

    up = maximize(folder)
    evidence: list[Block] = [state_counts(trials, ["sweep"]).drop(columns="sweep"),
                             "Top 10 trials:", top_trials(trials, 10, up).drop(columns="sweep"),
                             f"{value_column(trials)} by parameter (complete trials):", effects(trials, None)]
    evidence += images
    failed = trials[trials["state"] == "FAIL"]
    failures: list[Block] = [failed[["number", "error"]]] if len(failed) else ["No trial failed."]
    return [(f"Sweep report: {name}", [f"{len(trials)} trials from `{folder}`."]), ("The question", question),
            ("The answer", answer), ("The evidence", evidence), ("Failures", failures)]


def write(trials: pd.DataFrame, folder: Path, images: list[Path]) -> list[Path]:
    """Write report.md (images linked) and report.html (images embedded) into `folder`."""
    parts = sections(trials, folder, images)
    md, page = [], []
    for i, (title, blocks) in enumerate(parts):
        md.append(f"{'#' if i == 0 else '##'} {title}\n")
        page.append(f"<h{1 if i == 0 else 2}>{html.escape(title)}</h{1 if i == 0 else 2}>")
        for block in blocks:
            if isinstance(block, pd.DataFrame):
                md.append(_markdown(block) + "\n")
                page.append(block.to_html(index=False, float_format=lambda x: f"{x:.4g}", border=0, na_rep=""))
            elif isinstance(block, Path):
                md.append(f"![{block.stem}]({block.name})\n")
                data = base64.b64encode(block.read_bytes()).decode()
                page.append(f'<figure><img alt="{block.stem}" src="data:image/png;base64,{data}"></figure>')
            elif isinstance(block, tuple):
                md.append(f"```\n{block[1].rstrip()}\n```\n")
                page.append(f"<pre>{html.escape(block[1])}</pre>")
            else:
                md.append(block + "\n")
                page.append(f"<p>{html.escape(block)}</p>")
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{padding:3px 8px;border-bottom:1px solid #ddd}"
             "pre{background:#f5f5f5;padding:8px;overflow-x:auto}img{max-width:100%}")
    document = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(parts[0][0])}</title>"
                f"<style>{style}</style></head><body>{''.join(page)}</body></html>\n")
    return [write_text(folder / "report.md", "\n".join(md)), write_text(folder / "report.html", document)]
