"""--plan and --slurm: what a grid would cost, and a grid submitted as a SLURM job array (one task per cell).

Both end the script (workers.EarlyExit); launch.train_and_evaluate calls `plan_or_submit` only when one of the two
flags is given, so a run without them never loads this file (nor submitit).
  * --plan: lists the cells (done, running, to do), the GPU-hours and the disk the rest needs, from the rates in
    launch.RATES (or the rates measured in the results folder itself), and what --slurm would submit; runs nothing;
  * --slurm: submits one task per cell still to do as a SLURM job array through submitit. Each task runs the
    same script as one worker that does one cell (GridTask). SLURM's signal before the time limit (submitit's,
    SIGUSR2 by default) and SIGTERM (preemption) make the task checkpoint its cell at the next step and submitit
    requeue it; the requeued task resumes from that checkpoint. The task that finishes the last cell writes the
    tables.

Sections: 1. the plan, 2. SLURM, 3. the entry point.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shlex
import shutil
import signal
import sys
from pathlib import Path

import common
import grid
import launch
import workers
from common import KitError
from launch import (BYTES_PER_PARAMETER, BYTES_PER_RERANKED_PAIR, SUBMITIT_VERSION, TOTAL, Estimator,
                    collection_queries, describe_device, kind_of, plan_cells, step_floor)


# ================================================================================================
# 1. The plan
# ================================================================================================
def plan_text(script: str, mode: str, configs, collections, results: Path, device: str, depth: int,
              max_queries: int | None, args, models=()) -> str:
    """The plan: every cell with its state and estimated time left, the rates per backbone and where they come from,
    the work per cell, the total time and disk, and what --slurm would submit."""
    queries = {c.name: collection_queries(c, max_queries) for c in collections}
    plans = plan_cells(configs, collections, results, depth, queries, models)
    estimator = Estimator(configs, results, device)
    cfgs = {grid.cell_dir(results, c): c for seeds in configs.values() for c in seeds}
    for p in plans:
        p.seconds = estimator.seconds(p)
    unit = "GPU" if kind_of(device) == "cuda" else "CPU"
    cfg = next(iter(cfgs.values()))
    backbones = list(dict.fromkeys(c.backbone for c in cfgs.values()))
    counts = {s: sum(p.state.split(" (")[0] == s for p in plans) for s in ("done", "running")}
    todo = [p for p in plans if p.state != "done" and not p.state.startswith("running")]
    lines = [f"Plan of {script} ({mode}): {len(cfgs)} cells of {len(backbones)} backbone(s), "
             f"{len({c.objective for c in cfgs.values()})} objective(s) and {len({c.seed for c in cfgs.values()})} "
             f"seed(s){f', and {len(models)} model(s)' if models else ''}, {cfg.precision} on "
             f"{describe_device(device)}; results in {results}. Nothing was run.",
             "", f"Cells: {counts['done']} done, {counts['running']} running, {len(todo)} to do"]
    width = max(len(p.label) for p in plans)
    for p in plans:
        left = f"~{workers.format_duration(p.seconds)} {unit}" if p.state != "done" else ""
        lines.append(f"  {p.label:<{width}}  {p.state:<28} {left}")
    lines += ["", f"Rates on {describe_device(device)}, {cfg.precision}, max length {cfg.max_length} (pairs/s):"]
    refs: list[str] = []
    for b in backbones:
        rate = estimator.rate(b)
        refs += [rate.ref] if rate.ref not in refs else []
        lines.append(f"  {b:<16} train {rate.train:>9,.1f}  re-rank {rate.rerank:>9,.1f}  "
                     f"[{refs.index(rate.ref) + 1}] {rate.source}")
    lines += [f"  [{k}] {ref}" for k, ref in enumerate(refs, 1)]
    steps = sorted({c.steps for c in cfgs.values()})
    shapes: dict[int, set] = {}
    for c in cfgs.values():
        shapes.setdefault(c.batch_queries * c.group_size * c.grad_accumulation, set()).add(c.objective)
    shapes_text = "; ".join(f"{n} ({', '.join(sorted(o))})" for n, o in sorted(shapes.items()))
    total_pairs = sum((n or 0) * depth for n in queries.values())
    unknown = [name for name, n in queries.items() if n is None]
    lines += ["", f"Work per cell: {'/'.join(f'{s:,}' for s in steps)} training steps of {shapes_text} pairs; "
                  f"re-ranking {len(collections)} collection(s), "
                  f"top {depth} of {sum(n or 0 for n in queries.values()):,} queries = {total_pairs:,} pairs"
                  + (f" (query counts unknown for {', '.join(unknown)})" if unknown else "") + "."]
    train_s = sum(max(p.train_pairs / estimator.rate(p.backbone).train,
                      p.steps_left * step_floor(p.backbone, device)) for p in todo)
    total_s = sum(p.seconds for p in todo)
    longest = max((p.seconds for p in todo), default=0)
    lines.append(f"Left to do: {total_s / 3600:,.1f} {unit}-hours ({train_s / 3600:,.1f} training, "
                 f"{(total_s - train_s) / 3600:,.1f} re-ranking): " + ", ".join(
                     f"about {workers.format_duration(max(total_s / n, longest))} with {n} worker(s)"
                     for n in sorted({1, 4, args.array_parallelism})) +
                 f" (a cell is not split: the longest takes {workers.format_duration(longest)}).")
    now = sum(f.stat().st_size for p in plans if p.folder.is_dir() for f in p.folder.rglob("*") if f.is_file())
    model = sum(TOTAL.get(p.backbone, TOTAL["bert-base"]) * BYTES_PER_PARAMETER["model"] for p in todo if p.steps_left)
    checkpoints = sorted((TOTAL.get(p.backbone, TOTAL["bert-base"]) * BYTES_PER_PARAMETER["checkpoint"]
                          for p in todo if p.steps_left), reverse=True)
    if getattr(args, "keep_checkpoint", False):
        checkpoint, kept = sum(checkpoints), "last checkpoints, kept"
    else:  # a finished cell drops its checkpoint: only the cells training at once hold one
        at_once = min(len(checkpoints), args.array_parallelism)
        checkpoint, kept = sum(checkpoints[:at_once]), f"checkpoints of the {at_once} cells training at once"
    runs = sum(p.rerank_pairs for p in todo) * BYTES_PER_RERANKED_PAIR
    lines.append(f"Disk: {(model + checkpoint + runs) / 1e9:,.1f} GB more (models {model / 1e9:,.1f}, {kept} "
                 f"{checkpoint / 1e9:,.1f}, runs {runs / 1e9:,.1f}); these cells hold {now / 1e9:,.2f} GB now.")
    tasks_device = "cuda:0" if args.gpus else "cpu"
    tasks = Estimator(configs, results, tasks_device, cores=args.cpus)
    lines += ["", slurm_text(args, len(todo), max((tasks.seconds(p) for p in todo), default=0), results)]
    if kind_of(tasks_device) != kind_of(device):
        lines.append(f"(--slurm runs on {'GPUs' if args.gpus else 'CPUs'}: plan with "
                     f"{'--gpu 0' if args.gpus else '--gpu -1'} to see the cells its tasks would train.)")
    lines.append("Estimates: from the rates above, which say where each comes from; the results folder's own "
                 "measurements replace them as cells finish.")
    return "\n".join(lines)


# ================================================================================================
# 2. SLURM
# ================================================================================================
def slurm_text(args, tasks: int, longest_s: float, results: Path) -> str:
    """What --slurm would submit (or did), in sbatch's terms."""
    if not tasks:
        return "--slurm would submit nothing: every cell is done or running."
    limit = grid.slurm_minutes(args.time_limit) * 60
    flags = [f"--array=0-{tasks - 1}%{min(tasks, args.array_parallelism)}", f"--time={args.time_limit}",
             f"--gpus-per-node={args.gpus}" if args.gpus else "(no GPU)", f"--cpus-per-task={args.cpus}",
             f"--mem={args.mem}GB", f"--partition={args.partition}" if args.partition else "(the default partition)",
             f"--account={args.account}" if args.account else "(the default account)",
             "--signal=USR2@90 (submitit's; SIGTERM too)"]
    requeues = max(0, math.ceil(longest_s / max(limit * 0.8, 1)) - 1)
    return (f"--slurm would submit one job array of {tasks} task(s), one per cell to do: {' '.join(flags)}; logs in "
            f"{Path(results) / 'slurm'}. " + (f"The longest cell runs past the time limit about {requeues} time(s): each "
                                               f"time it checkpoints and is requeued." if requeues else
                                               "The longest cell fits in the time limit."))


class GridTask:
    """What each task of a --slurm job array runs: the experiment script itself, in this process, as a worker
    that does one cell. submitit pickles it and calls it with the task's index; SLURM's signal before the time
    limit and SIGTERM (preemption) ask the work to stop (common.request_stop): the cell's checkpoint is saved at
    its next step, and submitit's own handler then calls `checkpoint` and requeues the task, which resumes it."""

    def __init__(self, script: str, argv: list[str], repo: str):
        self.script, self.argv, self.repo = script, argv, repo
        self.signum = None

    def __call__(self, index: int) -> str:
        import importlib.util
        import submitit
        sys.path.insert(0, self.repo)
        requeue = signal.getsignal(getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG))  # submitit's handler

        def stop(signum, frame):
            self.signum = signum
            common.request_stop(f"{signal.Signals(signum).name}: a time limit or a preemption")
        for name in {submitit.JobEnvironment.USR_SIG, "USR1", "USR2", "TERM"}:
            signal.signal(getattr(signal, "SIG" + name), stop)
        launch._TASK.update(index=index)
        sys.argv = [self.script, *self.argv]
        spec = importlib.util.spec_from_file_location(Path(self.script).stem, self.script)
        module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # as an import: its `if __name__ == "__main__"` does not run
        try:
            module.main()
        except workers.EarlyExit as early:
            print(early, flush=True)
        except KitError as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            sys.exit(2)
        except common.Interrupted as stopped:
            print(f"note: {stopped}; the task is requeued", flush=True)
            if self.signum is None or not callable(requeue):
                raise
            requeue(self.signum, None)  # submitit: checkpoint() below, requeue, and exit
            raise
        return "done"

    def checkpoint(self, index: int):
        """Called by submitit before requeueing: the same task again (the cell's state is in its checkpoint)."""
        import submitit
        return submitit.helpers.DelayedSubmission(GridTask(self.script, self.argv, self.repo), index)


def task_argv(args) -> list[str]:
    """The command line of a task: the flags given, less --slurm and its options, on the task's GPU (or CPUs).
    An explicit --precision is passed on; 'auto' is resolved by each task on its node (README: on a partition
    with GPUs of several kinds, pass --precision so that every task trains the same cells)."""
    argv = []
    for field in dataclasses.fields(args):
        name = field.name
        if name not in args.given or name in ("slurm", "plan", "gpu", *grid.SLURM_OPTIONS):
            continue
        value, flag = getattr(args, name), "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv + ["--gpu", "0" if args.gpus else "-1"]


def submit(args, script: str, tasks: int, results: Path) -> list:
    """Submit `tasks` GridTasks as one job array; KIT_SUBMITIT_CLUSTER=local runs them on this machine through
    submitit's local executor instead (what the tests do)."""
    try:
        import submitit
    except ImportError:
        raise KitError(f"--slurm submits through submitit, which is not installed: pip install "
                       f"submitit=={SUBMITIT_VERSION}") from None
    cluster = os.environ.get("KIT_SUBMITIT_CLUSTER", "slurm")
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if cluster == "slurm" and missing:
        raise KitError(f"--slurm: {missing[0]} is not on this machine's PATH; run the command on the cluster's login "
                       f"node (--plan shows what would be submitted)")
    executor = submitit.AutoExecutor(folder=Path(results).resolve() / "slurm", cluster=cluster,
                                     slurm_max_num_timeout=100)
    setup = [f"export PYTHONPATH={shlex.quote(str(common.REPO))}:$PYTHONPATH"]
    executor.update_parameters(name=f"kit-{Path(script).stem}", timeout_min=math.ceil(grid.slurm_minutes(args.time_limit)),
                               gpus_per_node=args.gpus, cpus_per_task=args.cpus, mem_gb=args.mem,
                               slurm_partition=args.partition, slurm_account=args.account,
                               slurm_array_parallelism=args.array_parallelism, slurm_setup=setup, local_setup=setup)
    task = GridTask(str(Path(script).resolve()), task_argv(args), str(common.REPO))
    return executor.map_array(task, list(range(tasks)))


# ================================================================================================
# 3. The entry point
# ================================================================================================
def plan_or_submit(args, script: str, mode: str, configs, collections, results: Path, device: str, options: dict):
    """What --plan or --slurm asks for instead of running the grid here; ends the script with workers.EarlyExit.
    `options` are grid.train_and_evaluate's."""
    depth, max_queries, models = options.get("depth", 1000), options.get("max_queries"), options.get("models", ())
    if getattr(args, "plan", False):  # no grid.preflight: a plan downloads nothing
        print(plan_text(script, mode, configs, collections, results, device, depth, max_queries, args, models))
        raise workers.EarlyExit("note: --plan ran nothing")
    # Checked here, before the tasks start (and the published files fetched once, on the login node), but for
    # the teacher files that the tasks themselves make (exp_kd_vs_cl.py's, under the results folder).
    made_here = Path(results).resolve()
    grid.preflight({k: [c for c in cfgs if not (c.teacher_file() and made_here in
                                                 common.resolve_file(c.teacher_file()).resolve().parents)]
                    for k, cfgs in configs.items()}, collections, options.get("run_dir"), results,
                   options.get("keep_checkpoint", False))
    queries = {c.name: collection_queries(c, max_queries) for c in collections}
    plans = plan_cells(configs, collections, results, depth, queries, models)
    todo = [p for p in plans if p.state != "done" and not p.state.startswith("running")]
    if not todo:
        raise workers.EarlyExit("note: nothing to submit: every cell is done or running (rerun without --slurm to "
                                "print the tables)")
    estimator = Estimator(configs, results, device, cores=args.cpus)
    longest = max(estimator.seconds(p) for p in todo)
    jobs = submit(args, sys.argv[0], len(todo), results)
    print(slurm_text(args, len(todo), longest, results).replace("would submit", "submitted"))
    raise workers.EarlyExit(f"note: submitted job array {jobs[0].job_id.split('_')[0]} "
                            f"({', '.join(j.job_id for j in jobs[:3])}{' ...' if len(jobs) > 3 else ''}); the task "
                            f"that finishes the last cell writes the tables, and rerunning this command without "
                            f"--slurm then prints them")
