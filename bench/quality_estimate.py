"""Judge-corrected quality: the 95% intervals of PPI++ and Rogan–Gladen (human labels + judge verdicts) against
the human labels alone at the same number of labels — coverage of the true pass rate and mean width, over many
simulated draws, with real judges and with useless ones.

The model under test is the embedded Gemma 3 270M answering SMS spam/ham with fixed 8-shot prompts (a real run in a
temporary call log); an answer's human label is pass when it matches the dataset's gold label. The first --n/2
answers train a head judge (MiniLM + logistic, `llmbus judge train --kind head`); the other --n/2 are the
population, judged once by the head judge (its verdict, and its pass probability), by the LLM judge
(examples/sms_spam/judge.yaml on Gemma, label-scored) and by two useless judges (a coin flip, always pass). Then
for each judge and each label budget n, --draws times: n human-labeled and --unlabeled judge-only items drawn with
replacement from the population (whose pass rate is then exactly the truth), and every method's interval; the
ppi-python column is the same PPI++ estimate with ppi-python's own interval (`small_sample=False`), on the same
draws. --from reruns the simulation on the labels and verdicts an earlier run saved, without the model.

    LLMBUS_THREADS=1 nice .venv/bin/python bench/quality_estimate.py [--n 400] [--draws 1000] [--labels 50,100,200]
                                                                     [--unlabeled 1000] [--from verdicts.json]

Targets: PPI++ coverage ≥ 0.93 everywhere; its mean width ≤ 0.7× the human-only (Wilson) width with the head
judge; with a useless judge still ≥ 0.93 and ≤ 1.1× the human-only width.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import llmbus
from llmbus import Call, Coverage, RunOptions, TrainSettings, binary_agreement, simulate_coverage

ROOT = Path(__file__).resolve().parents[1]
TASK, JUDGE = ROOT / "examples" / "sms_spam" / "task.yaml", ROOT / "examples" / "sms_spam" / "judge.yaml"


def correct(calls: list[Call]) -> np.ndarray:
    """The human label of each answer: 1 when it matches the gold label (a failed call is wrong)."""
    return np.array([float(c.error_kind is None and c.parsed == c.expected) for c in calls])


def train_head(project: llmbus.Project, run: llmbus.Run, calls: list[Call], out: Path) -> str:
    """A head judge trained on these answers' human labels (the real `llmbus judge train --kind head` path)."""
    project.create_label_project("train", run, ["pass", "fail"])
    path = out.parent / "train_labels.jsonl"
    path.write_text("".join(json.dumps({"item_id": c.item_id, "label": "pass" if ok else "fail"}) + "\n"
                            for c, ok in zip(calls, correct(calls), strict=True)))
    project.import_labels("train", path, "gold")
    report, model = project.train_judge("train", out, kind="head", folds=5, settings=TrainSettings(epochs=1))
    print(f"head judge: 5-fold kappa {report.kappa:.3f} on {report.n} training labels")
    return model


def judged(project: llmbus.Project, judge_run_id: str, item_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each item's verdict (1 pass / 0 fail or broken) and pass probability, in item order."""
    rows = {r["item_id"]: r for r in project.verdicts(judge_run_id)}
    verdict = np.array([float(rows[i]["verdict"] == "pass") for i in item_ids])
    prob = np.array([float((rows[i]["probs"] or {}).get("pass", rows[i]["verdict"] == "pass")) for i in item_ids])
    return verdict, prob


def row(name: str, n: int, sims: dict[str, Coverage], plain: Coverage) -> str:
    """One table line: coverage and width of each method (and of ppi-python's own PPI++ interval, `plain`, on the
    same draws), widths as ratios to the human-only width."""
    ppi, rg, humans = sims["ppi++"], sims["rogan-gladen"], sims["human-only"]
    if name.endswith("(pass probability)"):  # Rogan–Gladen corrects verdicts, not probabilities
        rg_cells = f"{'n/a: needs 1/0 verdicts':>20s}"
    else:
        cells = f"{rg.coverage:6.3f} {rg.mean_width / humans.mean_width:6.2f}×" if rg.draws else f"{'—':>6s} {'—':>7s}"
        rg_cells = f"{cells} {rg.refused / (rg.draws + rg.refused):5.0%}"
    return (f"{name:30s} {n:4d} | {ppi.coverage:5.3f} {ppi.mean_width / humans.mean_width:5.2f}× λ {ppi.mean_lam:4.2f}"
            f" | {plain.coverage:5.3f} {plain.mean_width / humans.mean_width:5.2f}× | {rg_cells:20s}"
            f" | {humans.coverage:5.3f} {humans.mean_width:5.3f}")


def collect(n: int, work: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Model answers, their human labels and every judge's verdicts on the population (the model calls)."""
    with llmbus.open(str(work / "bench.db")) as project, llmbus.get_model("local:gemma-3-270m", parallel=4) as model:
        model.provider.check()
        return collect_in(project, model, n, work)


def collect_in(project: llmbus.Project, model: llmbus.Model, n: int,
               work: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """`collect` on an open call log and model."""
    task = llmbus.load_task(TASK)
    # Fixed few-shot examples share one cached prompt prefix: the answers only need to be real model answers.
    task = task.model_copy(update={"fewshot": task.fewshot.model_copy(update={"strategy": "fixed"})})
    tick = time.perf_counter()
    train_run = project.run(task, model, RunOptions(limit=n // 2, concurrency=4))
    pop_run = project.run(task, model, RunOptions(offset=n // 2, limit=n // 2, concurrency=4))
    train_calls, pop_calls = list(project.calls(train_run)), list(project.calls(pop_run))
    y = correct(pop_calls)
    ids = [c.item_id for c in pop_calls]
    print(f"{len(train_calls) + len(pop_calls)} SMS answered in {time.perf_counter() - tick:.0f} s")
    tick = time.perf_counter()
    head = train_head(project, train_run, train_calls, work / "head")
    head_verdict, head_prob = judged(project, project.judge(JUDGE, pop_run, model=head).judge_run_id, ids)
    print(f"head judge trained and run in {time.perf_counter() - tick:.0f} s")
    tick = time.perf_counter()
    llm = project.judge(JUDGE, pop_run, model=model, concurrency=4)
    llm_verdict, _ = judged(project, llm.judge_run_id, ids)
    print(f"LLM judge: {llm.n} calls in {time.perf_counter() - tick:.0f} s")
    return y, {"head judge (verdict)": head_verdict, "head judge (pass probability)": head_prob,
               "LLM judge (Gemma 270M)": llm_verdict}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="SMS answered: half train the head judge, half are judged")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--labels", default="50,100,200", help="human-label budgets n")
    parser.add_argument("--unlabeled", type=int, default=1000, help="judge-only items N per draw")
    parser.add_argument("--from", dest="source", type=Path, help="verdicts.json of an earlier run: no model calls")
    args = parser.parse_args()
    if args.source:
        saved = json.loads(args.source.read_text())
        y, judges = np.array(saved["human"]), {k: np.array(v) for k, v in saved["judges"].items()}
    else:
        work = Path(tempfile.mkdtemp(prefix="llmbus-bench-estimate-"))
        y, judges = collect(args.n, work)
        (work / "verdicts.json").write_text(json.dumps({"human": y.tolist(),
                                                        "judges": {k: v.tolist() for k, v in judges.items()}}))
        print(f"labels and verdicts saved: rerun the simulation alone with --from {work / 'verdicts.json'}")
    rng = np.random.default_rng(0)
    judges |= {"coin-flip judge": (rng.uniform(size=len(y)) < 0.5) * 1.0,
               "constant judge (always pass)": np.ones(len(y))}
    print(f"\npopulation: {len(y)} answers, true pass rate {y.mean():.3f}; agreement with its human labels:")
    for name, verdicts in judges.items():
        stats = binary_agreement(["pass" if v >= 0.5 else "fail" for v in verdicts],
                                 ["pass" if h else "fail" for h in y], "pass")
        print(f"  {name:34s} kappa {stats.kappa:6.3f}  TPR {stats.tpr:5.3f}  TNR {stats.tnr:5.3f}  "
              f"judge pass rate {verdicts.mean():.3f} (truth {y.mean():.3f})")
    budgets = [int(b) for b in args.labels.split(",")]
    print(f"\n{args.draws} draws per line, N = {args.unlabeled} judge-only items; width ratios are to the human-only "
          "(Wilson) width at the same n")
    print(f"{'':35s} | {'PPI++':19s} | {'ppi-python':12s} | {'Rogan–Gladen':20s} | human-only")
    print(f"{'judge':30s} {'n':>4s} | {'cover width  λ':>19s} | {'cover width':>12s} | {'cover width refused':>20s} | "
          "cover width")
    tick = time.perf_counter()
    results: dict[tuple[str, int], dict[str, Coverage]] = {}
    plain: dict[tuple[str, int], Coverage] = {}
    for name, verdicts in judges.items():
        for k, n in enumerate(budgets):
            sims = simulate_coverage(y, verdicts, n=n, n_unlabeled=args.unlabeled, draws=args.draws, seed=k)
            plain[name, n] = simulate_coverage(y, verdicts, n=n, n_unlabeled=args.unlabeled, draws=args.draws,
                                               seed=k, small_sample=False)["ppi++"]
            results[name, n] = sims
            print(row(name[:30], n, sims, plain[name, n]))
    print(f"({time.perf_counter() - tick:.0f} s of simulation)")
    ppi_cover = min(s["ppi++"].coverage for s in results.values())
    good = max(s["ppi++"].mean_width / s["human-only"].mean_width
               for (name, _), s in results.items() if name.startswith("head"))
    bad = max(s["ppi++"].mean_width / s["human-only"].mean_width
              for (name, _), s in results.items() if not name.startswith("head"))
    print(f"\nPPI++ lowest coverage {ppi_cover:.3f} (target ≥ 0.93; ppi-python's interval: "
          f"{min(c.coverage for c in plain.values()):.3f}); width vs human-only: head judge at most {good:.2f}× "
          f"(target ≤ 0.70×), other judges at most {bad:.2f}× (target ≤ 1.10×)")


if __name__ == "__main__":
    main()
