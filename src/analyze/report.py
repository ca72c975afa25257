"""report.md and a self-contained report.html for one sweep: the question, the answer, the evidence, the failures.

Everything taken from the data (params, error messages, overrides) is escaped for the format it goes into.
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Union

import pandas as pd
import yaml

from .record import SweepRecord
from .tables import cell, effects, flag_gaps, markdown, noise, seed_noise, state_counts, top_trials
from ..files import write_text

Block = Union[str, pd.DataFrame, Path, tuple]  # text (with `code` spans), table, image, ("code", text)
ALT = {"history": "the objective of every trial in order, and the best so far",
       "parameters": "the objective against each numeric parameter",
       "importance": "each parameter's importance for the objective",
       "size": "the objective against the model's parameter count, with the Pareto front",
       "curves": "validation accuracy per epoch of the top trials"}



def tested_how(test: dict) -> str:
    """How best.yaml's test score was measured: the confirmed winner's mean over its seeds, or one replay."""
    if test.get("seeds"):
        return f"the mean of {test['seeds']} runs with different seeds (std {test.get('test_accuracy_std', 0):.4f}) after the search"
    return "measured once after the search"

def sections(record: SweepRecord, images: list[Path]) -> list[tuple[str, list[Block]]]:
    study, best, trials = record.study, record.best, record.trials
    question: list[Block] = []
    if study.get("search_space"):
        space = pd.DataFrame({"parameter": list(study["search_space"]),
                              "searched over": list(study["search_space"].values())})
        question += [f"Objective: {', '.join(f'{d} {m}' for m, d in record.objectives.items())}. "
                     f"Budget: {study.get('n_trials')} trials. Sampler: {study.get('sampler')} (seed "
                     f"{study.get('seed')}). Pruner: {study.get('pruner')} {study.get('pruner_settings') or ''}.",
                     space]
        if study.get("fixed"):
            question.append("Fixed for every trial: " + ", ".join(f"`{o}`" for o in study["fixed"]))
    else:
        question.append("No study.yaml beside trials.csv: the search space is not recorded.")

    answer: list[Block] = []
    if best:
        test = record.test
        answer.append(f"Best trial #{best['trial']}: {record.objective} {cell(best.get(record.objective))}"
                      + (f", test accuracy {test['test_accuracy']:.4f} (test loss {test['test_loss']:.4f}), "
                         f"{tested_how(test)}" if test.get("test_accuracy") is not None else "") + ".")
        answer.append(pd.DataFrame({"parameter": list(best["params"]), "value": list(best["params"].values())}))
        answer += ["Replay it:", ("code", best["command"]),
                   "Its full configuration:", ("code", yaml.safe_dump(best["config"], sort_keys=False))]
    else:
        answer.append("No trial completed.")

    sigma = noise(record)
    if sigma is not None:
        confirmed, held = best.get("confirmed") or {}, (best.get("confirmed") or {}).get("held")
        answer += [f"Confirmed over seeds: the top {len(seed_noise(record))} configurations were retrained with "
                   f"further seeds and the best mean won. The single-run ranking "
                   + ("held: the winner was also the best single run." if held else
                      f"did not hold: the best single run was #{confirmed.get('single_best')}.")
                   + f" Seed noise of one run: std {sigma:.4f}.", seed_noise(record)]

    top = top_trials(record, 10).drop(columns="sweep")
    if sigma is not None:
        top = flag_gaps(top, record.value, sigma)
    complete = int((trials["state"] == "COMPLETE").sum())
    evidence: list[Block] = [state_counts(trials, ["sweep"]).drop(columns="sweep")]
    if len(top):
        evidence += [f"Top {len(top)} trials:", top, f"{record.objective} by parameter (complete trials):",
                     effects(record, None)]
    if any(p.stem == "importance" for p in images) and complete < 20:
        evidence.append(f"Importance comes from only {complete} complete trials: read it as a rough guide.")
    evidence += images
    failed = trials[trials["state"] == "FAIL"]
    failures: list[Block] = [failed[["number", "error"]]] if len(failed) else ["No trial failed."]
    return [(f"Sweep report: {study.get('study_name', record.name)}",
             [f"{len(trials)} trials from `{record.folder}`."]),
            ("The question", question), ("The answer", answer), ("The evidence", evidence), ("Failures", failures)]


def _markdown_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _html_text(text: str) -> str:
    """Escaped, with `code` spans as <code>."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))


def write(record: SweepRecord, images: list[Path]) -> list[Path]:
    """Write report.md (images linked) and report.html (images embedded) into the sweep's folder."""
    parts = sections(record, images)
    md, page = [], []
    for i, (title, blocks) in enumerate(parts):
        md.append(f"{'#' if i == 0 else '##'} {_markdown_text(title)}\n")
        page.append(f"<h{1 if i == 0 else 2}>{html.escape(title)}</h{1 if i == 0 else 2}>")
        for block in blocks:
            if isinstance(block, pd.DataFrame):
                md.append(markdown(block) + "\n")
                shown = block.astype(object).where(block.notna(), None).map(cell)
                page.append(shown.to_html(index=False, border=0, escape=True))
            elif isinstance(block, Path):
                alt = ALT.get(block.stem, block.stem)
                md.append(f"![{alt}]({block.name})\n")
                data = base64.b64encode(block.read_bytes()).decode()
                page.append(f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>')
            elif isinstance(block, tuple):
                md.append(f"```\n{block[1].rstrip()}\n```\n")
                page.append(f"<pre>{html.escape(block[1])}</pre>")
            else:
                md.append(_markdown_text(block) + "\n")
                page.append(f"<p>{_html_text(block)}</p>")
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{padding:3px 8px;border-bottom:1px solid #ddd}"
             "pre{background:#f5f5f5;padding:8px;white-space:pre-wrap;overflow-wrap:anywhere}"
             "code{background:#f5f5f5;padding:0 3px}img{max-width:100%;height:auto}")
    document = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(parts[0][0])}</title>"
                f"<style>{style}</style></head><body>{''.join(page)}</body></html>\n")
    return [write_text(record.folder / "report.md", "\n".join(md)), write_text(record.folder / "report.html", document)]
