"""The whole job for one case (``hybridnde run``): data -> train -> rollout -> evaluate -> report.

* ``variants``: the case, or one variant per combination of ``--compare`` values;
* ``stages``: what each stage makes, the sections it depends on, how its output records that;
* ``record``: ``run.json``, the directory's log of stages (wall times, interrupted stages);
* ``runner``: ``run_pipeline`` -- checks, then runs or reuses every stage of every variant;
* ``report``: ``report.md`` and the printed summary, opened by ``verdict``'s sentence; ``comparison``:
  ``compare.md``/``compare.json``;
* ``formatting``: numbers and links as the reports write them;
* ``plots``: training curves and error growth of several rollouts in one figure.

Layout of ``DIR`` (``--out``)::

    truth.nc            training data (the case's [initial_condition] members)
    reference.nc        held-out truth: rollout.members members drawn with rollout.seed, over the horizon
                        (one member, the training start, for initial_condition.distribution = "point")
    closure.pt          trained closure, closure.log.jsonl beside it
    rollout.nc          the hybrid model from reference.nc's first states
    baseline.nc         the bare host solver from the same states (not for neural ODEs)
    metrics.json        `hybridnde evaluate --json` of rollout.nc, with "baseline" and "pipeline" keys
    report.md           the summary to read first; figures/*.png
    run.json            which stage ran when, with which checksum, for how long

With ``--compare`` every variant has a folder ``DIR/<key>=<value>/`` for the stages the compared key
changes; the others (the truth, usually the reference and the baseline) stay in ``DIR`` and are shared.
"""
from .runner import RunResult, StageResult, VariantResult, check_variants, run_pipeline
from .stages import STAGE_SECTIONS, STAGES, reference_case, rollout_case
from .variants import Variant, build_variants, parse_compare

__all__ = ["run_pipeline", "check_variants", "RunResult", "VariantResult", "StageResult", "Variant",
           "build_variants", "parse_compare", "STAGES", "STAGE_SECTIONS", "reference_case", "rollout_case"]
