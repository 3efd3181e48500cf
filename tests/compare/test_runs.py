"""Which config keys ``saes.compare`` shows: those that differ between runs that have them."""

from pathlib import Path

from saes.compare.runs import Run, differing_keys, format_table, label_runs


def _run(name: str, **config) -> Run:
    return Run(Path(name), {"l0": 32.0, "explained_variance": 0.9}, config, name=name)


def test_options_of_one_variant_only_are_not_differences():
    runs = [
        _run("topk", **{"sae.architecture": "topk", "sae.k": 32, "sae.aux_coef": 0.03, "optimizer.lr": 1e-3}),
        _run("batchtopk", **{"sae.architecture": "batchtopk", "sae.k": 32, "sae.aux_coef": 0.03,
                             "sae.threshold_rate": 0.01, "optimizer.lr": 1e-3}),
        _run("jumprelu", **{"sae.architecture": "jumprelu", "sae.bandwidth": 0.05, "optimizer.lr": 2e-3}),
    ]
    # k and aux_coef are shared and equal, threshold_rate/bandwidth belong to one run each,
    # architecture has its own column: only the learning rate differs.
    assert differing_keys(runs) == ["optimizer.lr"]
    label_runs(runs)
    assert [r.label for r in runs] == ["optimizer.lr=0.001", "optimizer.lr=0.001", "optimizer.lr=0.002"]
    header = format_table(runs).splitlines()[0].split()
    assert header[:3] == ["run", "variant", "optimizer.lr"] and "bandwidth" not in header


def test_a_shared_option_set_differently_is_a_difference_even_when_unset_in_one_run():
    runs = [_run("a", **{"sae.k": 32, "sae.k_start": None}), _run("b", **{"sae.k": 32, "sae.k_start": 128})]
    assert differing_keys(runs) == ["sae.k_start"]


def test_log_axis_ticks_skip_values_too_close_to_the_previous_one():
    from saes.compare.plots import spaced_ticks

    assert spaced_ticks([28.09, 32.0, 517.1, 1248.7, 0.0]) == [28.1, 517.1, 1248.7]
    assert spaced_ticks([16, 32, 64]) == [16, 32, 64]
