"""The mutations of scripts/mutate.py: deliberate bugs the test suite must catch.

Each is an exact ``(old, new)`` edit of one package file and the tests that guard the
behaviour; ``python -m scripts.mutate --check`` (run by scripts/test.sh) checks that every edit
still applies, so a refactor that moves a mutated line fails at once.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Mutation:
    """One deliberate bug: exact ``(old, new)`` edits of ``path`` and the tests that must fail."""

    name: str
    what: str
    path: str
    edits: tuple[tuple[str, str], ...]
    tests: tuple[str, ...]
    pending: str = ""
    """Non-empty: the guarded code lands with this branch; until its text is in the file the
    mutation is reported as pending and skipped (after the merge it is an ordinary one: delete
    the field then, so that a later refactor makes it fail, not skip)."""


MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "optimizer-never-steps",
        "the training loop computes gradients but never steps the optimizer",
        "iic_survey/training/loop.py",
        (("        w.scaler.step(w.opt)\n", "        pass  # mutation: no optimizer step\n"),),
        ("tests/training/test_trainer.py::test_ray_train_learns_the_tiny_set",),
    ),
    Mutation(
        "depth-calibration-ignored",
        "inference scores every row at the single temperature, T(W1) unused",
        "iic_survey/survey/classify.py",
        (
            (
                "probs = scoring.calibration.probabilities(logits, w1)",
                "probs = scoring.calibration.probabilities(logits, np.full(n, np.nan))",
            ),
        ),
        (
            "tests/integration/test_pipeline.py::test_result_rows_calibrate_per_depth_carry_allwise_columns_"
            "and_label_subsets",
            "tests/integration/test_pipeline.py::test_a_model_with_depth_calibration_and_a_domain_scores_rows_"
            "by_them",
        ),
    ),
    Mutation(
        "commit-without-row-count",
        "a pixel is committed whatever number of rows was staged",
        "iic_survey/output/commit.py",
        (("    if table.num_rows != int(expected_rows):\n", "    if False:  # mutation\n"),),
        ("tests/output/test_staging.py",),
    ),
    Mutation(
        "marker-before-data",
        "the _done marker is written before the pixel's data files (then rewritten after)",
        "iic_survey/output/commit.py",
        (
            (
                "    inside, strays = _hand_over_strays(root, order, pixel, table)\n",
                "    write_atomic(marker, json.dumps({'rows': table.num_rows}).encode())\n"
                "    inside, strays = _hand_over_strays(root, order, pixel, table)\n",
            ),
        ),
        (
            "tests/output/test_commit.py",
            "tests/output/test_staging.py",
            "tests/integration/test_faults.py",
        ),
    ),
    Mutation(
        "quality-flags-dropped",
        "the output's quality_flags column is written as 0 whatever the input's flags",
        "iic_survey/survey/classify.py",
        (
            (
                '"quality_flags": flags.astype(np.int32),',
                '"quality_flags": np.zeros(n, dtype=np.int32),  # mutation',
            ),
        ),
        ("tests/integration/test_pipeline.py", "tests/integration/test_bad_input.py"),
    ),
    Mutation(
        "margin-9-arcsec",
        "the margin keeps rows within 9 arcsec of a partition when 10 are asked",
        "iic_survey/output/margin.py",
        (
            (
                "keep = idx[d <= (float(arcsec) + 0.02) / 3600]",
                "keep = idx[d <= (float(arcsec) - 1.0 + 0.02) / 3600]",
            ),
        ),
        (
            "tests/output/test_collection.py::test_margin_holds_exactly_the_rows_near_each_partition",
        ),
    ),
    Mutation(
        "gate-at-single-temperature",
        "the precision gate compares what the catalog gets at the single temperature, not T(W1)",
        "iic_survey/survey/classify.py",
        (
            (
                "    out = result_rows(rows, logits, ood, actor.scoring)\n",
                "    t = DepthCalibration.constant(actor.scoring.calibration.temperature)\n"
                "    out = result_rows(rows, logits, ood, dataclasses.replace(actor.scoring, "
                "calibration=t))  # mutation\n",
            ),
        ),
        (
            "tests/model/test_precision.py::test_the_gate_judges_probabilities_as_the_catalog_gets_them",
        ),
    ),
    Mutation(
        "stale-staging-listing",
        "a commit lists the staging folder from the process's cached (stale) S3 listing",
        "iic_survey/output/staging.py",
        (
            (
                "    folder = fresh(staging_dir(root, order, pixel))\n",
                "    folder = staging_dir(root, order, pixel)  # mutation: cached listing\n",
            ),
        ),
        ("tests/output/test_staging.py::test_s3_commit_lists_the_staging_folder_afresh",),
    ),
)

EXIT_SURVIVED = 1
"""A mutation survived its tests (or a mutant run broke without a failing test)."""
EXIT_BASELINE = 2
"""The unmutated tests could not run (not merely failed): no verdict."""
EXIT_CANNOT_APPLY = 3
"""A mutation's text is not in its file exactly once: update the mutation to the code."""
