"""Suite-wide settings: strict dtype and rank promotion catch silent broadcasting
of (T,) weights against (T, ...) gradients, as in equinox's test suite."""

import os
import shutil
import tempfile

import jax

import mtopt  # noqa: F401 -- first, so that its XLA:CPU guard runs before any array exists

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

# Many tests build the same XLA programs again (a new closure per test): a compilation
# cache, one per run and shared by the xdist workers, compiles each program once.
_OWN_CACHE = os.environ.get("MTOPT_TEST_XLA_CACHE") is None
if _OWN_CACHE:  # the main process (or a plain run): made here, removed at the end
    os.environ["MTOPT_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="mtopt-xla-cache-")
jax.config.update("jax_compilation_cache_dir", os.environ["MTOPT_TEST_XLA_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# The files below sweep every registered method. Their default run keeps a
# representative subset (loss-only, stateful, Gramian, iterative solver, stochastic,
# Jacobian and preference methods); `pytest -m slow` runs all 33 methods.
# tests/test_registry.py checks every method's claimed properties in the default run.
REPRESENTATIVE_METHODS = frozenset(
    {"equal", "uncertainty", "famo", "mgda", "pcgrad", "upgrad", "nash_mtl", "moco",
     "graddrop", "epo"}
)
_METHOD_SWEEP_FILES = frozenset(
    {"test_hypothesis_methods.py", "test_state_safety.py", "test_validation_messages.py",
     "test_no_retrace.py", "test_checkpoint.py", "test_drivers_agree.py"}
)


# Heavy checks whose coverage the default run already has from a cheaper test (every
# method's claimed properties on random and degenerate inputs run in tests/test_registry.py,
# every method through value_and_grad in tests/test_step.py, and each driver, the runner,
# sweep, PSL and optax, keeps default tests of its own): the exact solvers' XLA programs
# take 1 to 5 s each to compile, so these deeper copies (more sizes, permutations and
# scalings of the same solve, other docs pages, long example runs) run in the slow set
# only (`pytest -m slow`). Keys are test files, values node-id prefixes
# after the file; a prefix that matches no collected test is an error (a renamed test must
# be renamed here too).
SLOW_IN_DEFAULT_RUN = {
    "test_cagrad.py": [
        "test_primal_optimum_matches_reference[float64]",
        "test_non_conflicting_for_c_at_least_one[float64]",
        "test_permutation_equivariant_and_scale_invariant",
        "test_solver_state",
    ],
    "test_checkpoint.py": [
        "test_training_resume_is_bit_identical[nash_mtl]",
    ],
    "test_config_method.py": [
        "ConFIGTest::test_permutation_scale_and_vmap_over_preferences",
        "ConFIGTest::test_degenerate",
    ],
    "test_docs.py": [f"test_page_python_blocks_run[{page}]" for page in (
        "gramian_methods", "reliability", "pareto", "benchmarks", "multi_device",
        "performance", "loss_weighting")],
    "test_dualproj.py": [
        "test_single_task_zero_gradients_and_vmap",
        "test_permutation_equivariant_and_scale_invariant",
    ],
    "test_epo.py": [
        "test_epo_lps_on_degenerate_gramians_match_linprog",
        "test_vmap_over_preferences_matches_loop",
        "test_simplex_lp_iteration_bound_keeps_feasibility",
    ],
    "test_examples.py": [
        "test_toy_trajectories_few_steps",
    ],
    "test_fairgrad.py": [
        "test_degenerate_cases_finite_and_float64_mixed_scales",
        "test_many_tasks_and_vmap",
    ],
    "test_fault_injection.py": [
        "test_training_skips_exactly_the_injected_steps[upgrad]",
    ],
    "test_float32_accuracy.py": [
        "test_permutation_invariance_and_float64_agreement[upgrad]",
        "test_permutation_invariance_and_float64_agreement[dualproj]",
    ],
    "test_graddrop.py": [
        "GradDropTest::test_vmap_over_jacobians_and_keys",
        "GradDropTest::test_sign_consistency_on_many_jacobians",
    ],
    "test_gramian_aggregator.py": [
        "RepresentationTest::test_loss_only_method_and_vmap",
        "test_representation_mode_with_a_preference_method",
    ],
    "test_hypothesis_methods.py": [
        "test_properties[upgrad]",
        "test_properties[epo]",
        "test_properties[nash_mtl]",
        "test_properties[mgda]",
        "test_properties[graddrop]",
    ],
    "test_imtl.py": [
        "IMTLGTest::test_degenerate_cases",
        "IMTLGTest::test_finite_on_all_cases_sum_one_or_zero",
        "IMTLHybridTest::test_direction_parallel_to_imtl_g_and_vmap",
        "IMTLGTest::test_permutation_and_scale",
    ],
    "test_low_memory.py": [
        "JitVmapTest::test_vmap_over_batches_and_parameters",
        "test_every_gramian_method_matches_the_default_path[nash_mtl]",
        "test_with_penalty[mgda]",
        "test_every_gramian_method_matches_the_default_path[upgrad]",
        "test_gramian_over_shared_and_over_every_parameter",
    ],
    "test_min_norm.py": [
        "test_certificate_flags_the_old_answer",
    ],
    "test_mixed_precision.py": [
        *(f"test_weights_close_to_float32_model[{name}]" for name in (
            "cagrad", "pmtl", "config", "dualproj", "epo", "fairgrad", "imtl", "imtl_g",
            "nash_mtl")),
        "test_bf16_step[True]",
        "test_gramian_of_bf16_model_close_to_float32",
        "test_low_memory_bf16_matches_default_bf16",
    ],
    # The NaN policies live in the step, not in the methods: the default run keeps
    # loss-only (equal), stateful (uncertainty, dwa), Gramian (mgda, also low_memory),
    # Jacobian (moco, graddrop) methods and the raise policy through the dual-cone,
    # min-norm and EPO solvers; the other solvers' copies run in the slow set.
    "test_nan_policy.py": [
        f"{test}[{name}" for test in (
            "test_finite_steps_identical_under_every_policy",
            "test_propagate_lets_the_non_finite_value_through",
            "test_skip_returns_zero_grads_and_the_input_state",
            "test_gradient_only_nan_is_caught_and_skipped",
        ) for name in ("upgrad", "nash_mtl", "gradnorm")
    ] + [
        "test_raise_policy_compiles_under_jit[cagrad",
        "test_raise_policy_compiles_under_jit[upgrad-low_memory]",
        "test_raise_policy_compiles_under_jit[epo-low_memory]",
        "test_keep_if_skipped_keeps_params_and_adam_state[nash_mtl-low_memory]",
    ],
    "test_nash_mtl.py": [
        "test_vmap_over_states_and_gramians_and_many_tasks",
        "test_degenerate_cases_stay_finite",
    ],
    "test_nonneg_qp.py": [
        "PropertiesTest::test_permutation_equivariant",
        "PropertiesTest::test_invariant_to_the_gradient_scale",
        "PropertiesTest::test_bfloat16_gramian",
        "PropertiesTest::test_many_tasks",
        "KnownValuesTest::test_single_task_and_zero_gramian",
    ],
    "test_pareto_front_tools.py": [  # (2, sweep) and (3, inclusion_exclusion) stay
        "HypervolumeGradientTest::test_finite_differences1",
        "HypervolumeGradientTest::test_finite_differences3",
    ],
    "test_pmtl.py": [
        "test_degenerate_gramians_are_finite",
        "test_vmap_over_preferences_and_index_agree",
        "test_ill_conditioned_sub_problems_are_exact[float64]",
    ],
    "test_problems.py": [
        "ProblemContractTest::test_jit_vmap_and_gradients4",
        "ProblemContractTest::test_jit_vmap_and_gradients5",
        "ProblemContractTest::test_jit_vmap_and_gradients7",
    ],
    "test_psl.py": [
        "TrainPSLTest::test_epo_quadratic_reaches_the_rays",
        "TrainPSLTest::test_stochastic_method_from_a_start_model",
    ],
    "test_runner.py": [
        "test_single_task_baseline",
        "test_representative_methods_run[epo]",
        "test_representative_methods_run[pcgrad]",
        "test_representative_methods_run[uncertainty]",
    ],
    "test_scalarization.py": [
        "LimitAndInvarianceTest::test_permutation_equivariance",
        "LimitAndInvarianceTest::test_degenerate_points_are_finite",
        "LimitAndInvarianceTest::test_float64",
        "LimitAndInvarianceTest::test_scale_invariance",
        "LimitAndInvarianceTest::test_bfloat16_losses_give_float32_weights",
    ],
    "test_step.py": [
        "StepTest::test_vmap_over_independent_problems",
    ],
    "test_sweep.py": [
        "FrontTest::test_dtlz2_das_dennis",
        "FrontTest::test_vlmop2_dirichlet_order",
        "SweepEqualsSeparateRunsTest::test_batched_start_points_toy",
    ],
    "test_tasks.py": [
        "test_short_training_beats_chance[multidigits-options1-mgda",
        "test_short_training_beats_chance[multidigits-options2-linear",
        "test_short_training_beats_chance[gradnorm-options4-mgda",
        "test_short_training_beats_chance[wine-options6-mgda",
    ],
    "test_upgrad.py": [
        "test_padding_with_zero_tasks_rescales_exactly",
        "PreferenceAndVmapTest::test_vmap_over_gramians_and_losses",
        "test_single_task_and_zero_gradients",
        "test_dualproj_is_not_linear_under_scaling_but_upgrad_is",
        "test_linear_under_scaling",
    ],
}


def pytest_collection_modifyitems(config, items):
    import pytest

    import mtopt

    names = set(mtopt.method_names())
    unmatched = {(f, prefix) for f, prefixes in SLOW_IN_DEFAULT_RUN.items() for prefix in prefixes}
    collected_files = {item.path.name for item in items}
    # chex's without_jit variants run every op eagerly (each op compiled on its own);
    # where the same test also runs jitted, the eager copy goes to the slow set:
    # tests/test_registry.py still runs every method without jit by default.
    jitted = {item.nodeid for item in items if item.nodeid.endswith("__with_jit")}
    for item in items:
        if item.nodeid.endswith("__without_jit"):
            if item.nodeid.replace("__without_jit", "__with_jit") in jitted:
                item.add_marker(pytest.mark.slow)
        test_id = item.nodeid.split("::", 1)[-1]
        for prefix in SLOW_IN_DEFAULT_RUN.get(item.path.name, ()):
            if test_id.startswith(prefix):
                item.add_marker(pytest.mark.slow)
                unmatched.discard((item.path.name, prefix))
        if item.path.name not in _METHOD_SWEEP_FILES or not hasattr(item, "callspec"):
            continue
        tokens = set(item.callspec.id.split("-"))
        methods = tokens & names
        if methods and not methods & REPRESENTATIVE_METHODS:
            item.add_marker(pytest.mark.slow)
    # Only files collected whole can be checked (not with -k or a node id).
    whole = not config.option.keyword and not any("::" in arg for arg in config.args)
    stale = sorted(p for p in unmatched if whole and p[0] in collected_files)
    if stale:
        raise pytest.UsageError(f"SLOW_IN_DEFAULT_RUN names tests that do not exist: {stale}")


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(os.environ["MTOPT_TEST_XLA_CACHE"], ignore_errors=True)
