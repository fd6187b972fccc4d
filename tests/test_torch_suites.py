"""PyTorch's own kl_div test suites, run against kldiv.torch.

PyTorch tests ``torch.nn.functional.kl_div`` and ``torch.nn.KLDivLoss`` through its OpInfo
(``nn.functional.kl_div`` in ``common_methods_invocations.op_db``), its ModuleInfo
(``nn.KLDivLoss`` in ``common_modules.module_db``) and the KLDivLoss entries of ``common_nn``
(``get_new_module_tests()`` and ``criterion_tests``). This file runs those tests with the
harness shipped in the wheel (``torch.testing._internal``: ``ops`` / ``modules`` /
``instantiate_device_type_tests``, ``TestGradients._check_helper``, ``NewModuleTest`` /
``CriterionTest``, PyTorch's ``gradcheck`` / ``gradgradcheck`` wrappers, ``TestCase.assertEqual``
tolerances), on the CPU, with ``kldiv.torch.kl_div`` / ``kldiv.torch.KLDivLoss`` in place of
PyTorch's. The test classes keep the names of PyTorch's (``TestCommon``, ``TestBwdGradients``,
``TestFwdGradients``, ``TestOperators``, ``TestVmapOperatorsOpInfo``, ``TestModule``,
``TestNN``; pytest shows them with a ``CPU`` suffix), so that the skips and tolerances
PyTorch's OpInfo/ModuleInfo key on those names apply here too:

* ``TestCommonCPU`` (test/test_ops.py ``TestCommon``): ``test_noncontiguous_samples``,
  ``test_variant_consistency_eager`` (with torch's ``F.kl_div`` as the reference and kldiv as
  the variant, gradients of input and target compared), ``test_out``.
* ``TestBwdGradientsCPU`` (test/test_ops_gradients.py): ``test_fn_grad`` (gradcheck),
  ``test_fn_gradgrad`` (gradgradcheck), float64, with the OpInfo's batched-grad flags.
* ``TestFwdGradientsCPU`` (test/test_ops_fwd_gradients.py): ``test_forward_mode_AD``,
  ``test_fn_fwgrad_bwgrad``.
* ``TestOperatorsCPU`` (test/functorch/test_ops.py): ``test_grad``, ``test_vjp``,
  ``test_vjpvjp``, ``test_jvp``, ``test_jvpvjp``, ``test_vmapvjp``, ``test_vmapvjpvjp``,
  ``test_vmapjvpall``; ``TestVmapOperatorsOpInfoCPU`` (test/functorch/test_vmap.py):
  ``test_vmap_exhaustive``.
  PyTorch runs these on float32; they run here on float32 and float64.
* ``TestModuleCPU`` (test/test_modules.py, on the ModuleInfo with ``kldiv.torch.KLDivLoss`` as
  its class): ``test_forward``, ``test_non_contiguous_tensors``, ``test_pickle``, ``test_repr``,
  ``test_grad``, ``test_gradgrad`` (the last two are skipped by PyTorch's own ModuleInfo).
* ``TestNN`` (test/test_nn.py running common_nn's ``NewModuleTest`` / ``CriterionTest``): each
  KLDivLoss entry, with ``torch.nn.functional.kl_div`` and ``torch.nn.KLDivLoss`` monkeypatched
  to kldiv's for the duration of the test.
* ``test_kldiv_torch_is_monkeypatch_safe``: patching ``torch.nn.functional.kl_div`` with
  ``kldiv.torch.kl_div`` must not change what ``kldiv.torch`` computes (its fallbacks must keep
  calling PyTorch's own function).

The bodies of PyTorch's tests are not in the wheel (only their helpers are); they are restated
here after PyTorch's, calling the shipped helpers. gradcheck compares an op with itself (and
with its default tolerances, rtol=1e-3, cannot see a 0.1% error), so wherever PyTorch's test
compares the op with itself (vjp against autograd, jvp against forward AD, ...), the test also
compares kldiv's numbers with those of torch's ``F.kl_div`` for the same inputs.

Needs PyTorch and expecttest (the whole file is skipped without them). CPU only.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import tempfile
import threading
import warnings
from unittest import mock

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed: its suites not run")
pytest.importorskip(
    "expecttest", reason="expecttest is not installed: torch.testing._internal needs it"
)

try:  # common_utils loads its own hypothesis profile on import: restore the project's after
    import hypothesis as _hypothesis

    _PROFILE = _hypothesis.settings.get_current_profile_name()
except (ImportError, AttributeError):  # pragma: no cover - no hypothesis, or an old one
    _hypothesis = None

import torch.autograd.forward_ad as fwAD  # noqa: E402
from torch.func import grad, jvp, vjp, vmap  # noqa: E402
from torch.testing._internal import common_nn  # noqa: E402
from torch.testing._internal.common_device_type import (  # noqa: E402
    OpDTypes,
    instantiate_device_type_tests,
    ops,
    tol,
    toleranceOverride,
)
from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402
from torch.testing._internal.common_modules import module_db, modules  # noqa: E402
from torch.testing._internal.common_utils import (  # noqa: E402
    TestCase,
    TestGradients,
    freeze_rng_state,
    gradcheck,
    gradgradcheck,
    noncontiguous_like,
)
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten  # noqa: E402

import kldiv.torch as kt  # noqa: E402

if _hypothesis is not None:
    _hypothesis.settings.load_profile(_PROFILE)

# Both torch's and kldiv's kl_div warn that reduction='mean' is not the KL divergence.
pytestmark = pytest.mark.filterwarnings("ignore:reduction.{1,2}'mean':UserWarning")

# PyTorch's own function, as it is before any test patches it.
TORCH_KL_DIV = torch.nn.functional.kl_div

# PyTorch's OpInfo for F.kl_div, and a copy of it whose op is kldiv's (as test_ops.py does
# for its own substitutions: copy.copy, then set .op).
TORCH_OPINFO = next(
    o for o in op_db if o.name == "nn.functional.kl_div" and o.variant_test_name == ""
)
KLDIV_OPINFO = copy.copy(TORCH_OPINFO)
KLDIV_OPINFO.op = kt.kl_div
assert TORCH_OPINFO.op is TORCH_KL_DIV

# PyTorch's ModuleInfo for nn.KLDivLoss, with kldiv's module as the class under test.
TORCH_MODULEINFO = next(m for m in module_db if m.module_cls is torch.nn.KLDivLoss)
KLDIV_MODULEINFO = copy.copy(TORCH_MODULEINFO)
KLDIV_MODULEINFO.module_cls = kt.KLDivLoss
KLDIV_MODULEINFO.is_lazy = False

# test_ops_gradients.py / test_ops_fwd_gradients.py: "gradcheck requires double precision".
_gradcheck_ops = functools.partial(
    ops, dtypes=OpDTypes.supported, allowed_dtypes=[torch.double, torch.cdouble]
)
# functorch's test_ops.py runs on float32 only; float64 is added here.
_functorch_ops = functools.partial(ops, allowed_dtypes=(torch.float32, torch.float64))


# --------------------------------------------------------------------------------------------
# test/test_ops.py: TestCommon
# --------------------------------------------------------------------------------------------


class TestCommon(TestCase):
    """The TestCommon tests of test/test_ops.py that apply to kl_div, on kldiv.torch.kl_div."""

    exact_dtype = True

    # test_ops.py runs it on float32 (allowed_dtypes float32, long, complex64); float64 added.
    @ops([KLDIV_OPINFO], allowed_dtypes=(torch.float32, torch.float64))
    def test_noncontiguous_samples(self, device, dtype, op):
        test_grad = dtype in op.supported_backward_dtypes(torch.device(device).type)
        sample_inputs = op.sample_inputs(device, dtype, requires_grad=test_grad)
        for sample_input in sample_inputs:
            t_inp, t_args, t_kwargs = sample_input.input, sample_input.args, sample_input.kwargs
            noncontig_sample = sample_input.noncontiguous()
            n_inp, n_args, n_kwargs = (
                noncontig_sample.input,
                noncontig_sample.args,
                noncontig_sample.kwargs,
            )
            self.assertFalse(n_inp.is_contiguous())

            # validates forward
            expected = op(t_inp, *t_args, **t_kwargs)
            actual = op(n_inp, *n_args, **n_kwargs)
            self.assertEqual(actual, expected)
            # ... and against torch's own kl_div on the noncontiguous tensors
            self.assertEqual(actual, TORCH_KL_DIV(n_inp, *n_args, **n_kwargs))

            # Validate backward
            if not test_grad:
                continue
            expected = sample_input.output_process_fn_grad(expected)
            actual = sample_input.output_process_fn_grad(actual)
            grad_for_expected = torch.randn_like(expected)
            grad_for_actual = noncontiguous_like(grad_for_expected)

            t_inputs = (t_inp,) + t_args
            n_inputs = (n_inp,) + n_args
            t_input_tensors = [
                t for t in t_inputs if isinstance(t, torch.Tensor) and t.requires_grad
            ]
            n_input_tensors = [
                n for n in n_inputs if isinstance(n, torch.Tensor) and n.requires_grad
            ]
            self.assertEqual(len(t_input_tensors), len(n_input_tensors))

            t_grads = torch.autograd.grad(
                expected, t_input_tensors, grad_for_expected, allow_unused=True
            )
            n_grads = torch.autograd.grad(
                actual, n_input_tensors, grad_for_actual, allow_unused=True
            )
            msg = "Got different gradients for contiguous / non-contiguous inputs wrt input {}."
            for i, (t, n) in enumerate(zip(t_grads, n_grads)):
                self.assertEqual(t, n, msg=msg.format(i))

            # ... and against torch's own gradients on the noncontiguous tensors
            torch_out = TORCH_KL_DIV(n_inp, *n_args, **n_kwargs)
            torch_grads = torch.autograd.grad(
                torch_out, n_input_tensors, grad_for_actual, allow_unused=True
            )
            for i, (r, n) in enumerate(zip(torch_grads, n_grads)):
                self.assertEqual(n, r, msg=f"gradient wrt input {i} differs from torch's")

    # test_variant_consistency_eager compares an OpInfo's variants (method, inplace, aliases)
    # with its function; kl_div has none, so here kldiv's function is the variant and torch's
    # the function. As in test_ops.py the backward is output_process_fn_grad(out).sum(); as
    # kl_div's samples are not leaves, gradients are taken with autograd.grad (for the input
    # and the target) rather than read from .grad.
    @ops([KLDIV_OPINFO], dtypes=OpDTypes.supported)
    def test_variant_consistency_eager(self, device, dtype, op):
        requires_grad = dtype in op.supported_backward_dtypes(torch.device(device).type)
        samples = list(op.sample_inputs(device, dtype, requires_grad=requires_grad))
        for sample in samples:
            inputs = [sample.input, *sample.args]
            expected_forward = TORCH_OPINFO(sample.input, *sample.args, **sample.kwargs)
            variant_forward = op(sample.input, *sample.args, **sample.kwargs)
            self.assertEqual(variant_forward, expected_forward)
            if not requires_grad:
                continue
            diff = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
            expected_grad = torch.autograd.grad(
                sample.output_process_fn_grad(expected_forward).sum(), diff, retain_graph=True
            )
            variant_grad = torch.autograd.grad(
                sample.output_process_fn_grad(variant_forward).sum(), diff, retain_graph=True
            )
            self.assertEqual(variant_grad, expected_grad)
            # A random (non-constant) grad_output, for the 'none' reduction's backward.
            go = torch.randn_like(expected_forward)
            self.assertEqual(
                torch.autograd.grad(variant_forward, diff, go),
                torch.autograd.grad(expected_forward, diff, go),
            )

    # test_out: an op that claims supports_out=False must not accept out=.
    @ops([KLDIV_OPINFO], dtypes=OpDTypes.any_one)
    def test_out(self, device, dtype, op):
        self.assertFalse(op.supports_out)
        for sample in op.sample_inputs(device, dtype):
            expected = op(sample.input, *sample.args, **sample.kwargs)
            op_out = functools.partial(op, sample.input, *sample.args, **sample.kwargs)
            with self.assertRaises(Exception):  # noqa: B017 - as test_ops.py's test_out
                assert op_out(out=expected) != NotImplemented
            return


instantiate_device_type_tests(TestCommon, globals(), only_for="cpu")


# --------------------------------------------------------------------------------------------
# test/test_ops_gradients.py: TestBwdGradients; test/test_ops_fwd_gradients.py: TestFwdGradients
# --------------------------------------------------------------------------------------------


class TestBwdGradients(TestGradients):
    """test/test_ops_gradients.py, on kldiv.torch.kl_div (the inplace tests do not apply)."""

    @_gradcheck_ops([KLDIV_OPINFO])
    def test_fn_grad(self, device, dtype, op):
        if dtype not in op.supported_backward_dtypes(torch.device(device).type):
            self.skipTest("Skipped! Dtype is not in supported backward dtypes!")
        else:
            self._grad_test_helper(device, dtype, op, op.get_op())

    @_gradcheck_ops([KLDIV_OPINFO])
    def test_fn_gradgrad(self, device, dtype, op):
        self._skip_helper(op, device, dtype)
        if not op.supports_gradgrad:
            self.skipTest("Op claims it doesn't support gradgrad. This is not verified.")
        else:
            self._check_helper(device, dtype, op, op.get_op(), "bwgrad_bwgrad")


instantiate_device_type_tests(TestBwdGradients, globals(), only_for="cpu")


class TestFwdGradients(TestGradients):
    """test/test_ops_fwd_gradients.py, on kldiv.torch.kl_div."""

    @_gradcheck_ops([KLDIV_OPINFO])
    def test_fn_fwgrad_bwgrad(self, device, dtype, op):
        self._skip_helper(op, device, dtype)
        if op.supports_fwgrad_bwgrad:
            self._check_helper(device, dtype, op, op.get_op(), "fwgrad_bwgrad")
        else:
            err_msg = r"Trying to use forward AD with .* that does not support it"
            with self.assertRaisesRegex(NotImplementedError, err_msg):
                self._check_helper(device, dtype, op, op.get_op(), "fwgrad_bwgrad")

    def _forward_grad_helper(self, device, dtype, op, variant, is_inplace):
        def call_grad_test_helper():
            check_batched_forward_grad = (op.check_batched_forward_grad and not is_inplace) or (
                op.check_inplace_batched_forward_grad and is_inplace
            )
            self._grad_test_helper(
                device,
                dtype,
                op,
                variant,
                check_forward_ad=True,
                check_backward_ad=False,
                check_batched_grad=False,
                check_batched_forward_grad=check_batched_forward_grad,
            )

        if op.supports_forward_ad:
            call_grad_test_helper()
        else:
            err_msg = r"Trying to use forward AD with .* that does not support it"
            with self.assertRaisesRegex(NotImplementedError, err_msg):
                call_grad_test_helper()

    @_gradcheck_ops([KLDIV_OPINFO])
    def test_forward_mode_AD(self, device, dtype, op):
        self._skip_helper(op, device, dtype)
        self._forward_grad_helper(device, dtype, op, op.get_op(), is_inplace=False)


instantiate_device_type_tests(TestFwdGradients, globals(), only_for="cpu")


# --------------------------------------------------------------------------------------------
# test/functorch/test_ops.py: TestOperators; test/functorch/test_vmap.py (helpers restated from
# test/functorch/common_utils.py and test_ops.py, which the wheel does not ship)
# --------------------------------------------------------------------------------------------


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def _autograd_grad(outputs, inputs, grad_outputs=None, create_graph=True):
    """autograd.grad over pytrees; zeros for inputs the outputs do not depend on."""
    inputs, spec = tree_flatten(inputs)
    diff_inputs = tuple(i for i in inputs if i.requires_grad)
    if grad_outputs is None:
        diff_outputs = tuple(o for o in outputs if o.requires_grad)
    else:
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if o.requires_grad]
        diff_outputs, grad_outputs = zip(*pairs) if pairs else ((), ())
    grads = iter(
        torch.autograd.grad(
            diff_outputs, diff_inputs, grad_outputs, create_graph=create_graph, allow_unused=True
        )
    )
    result = []
    for i in inputs:
        g = next(grads) if i.requires_grad else None
        result.append(torch.zeros_like(i) if g is None else g)
    return tree_unflatten(result, spec)


def _diff_arg(arg, requires_grad=True):
    if not isinstance(arg, torch.Tensor):
        return False
    return arg.requires_grad if requires_grad else (arg.is_floating_point() or arg.is_complex())


def _normalize_op_input_output2(f, args, kwargs, output_process_fn_grad=None, requires_grad=True):
    """f' taking only the differentiable tensors of args, positionally (functorch's helper)."""
    flat_args, args_spec = tree_flatten(args)
    diff_argnums = tuple(
        i for i, a in enumerate(flat_args) if _diff_arg(a, requires_grad=requires_grad)
    )
    assert len(diff_argnums) > 0
    primals = tuple(flat_args[i] for i in diff_argnums)

    @functools.wraps(f)
    def wrapped(*primals):
        _args = list(flat_args)
        for num, arg in zip(diff_argnums, primals):
            _args[num] = arg
        result = f(*tree_unflatten(_args, args_spec), **kwargs)
        if output_process_fn_grad is not None:
            result = output_process_fn_grad(result)
        return result

    return wrapped, primals


def _normalize_op_input_output(f, sample, requires_grad=True):
    args = tuple([sample.input, *sample.args])
    return _normalize_op_input_output2(
        f, args, sample.kwargs, sample.output_process_fn_grad, requires_grad=requires_grad
    )


def _ref_vjp(f, *primals):
    result = f(*primals)

    def wrapped(cotangents):
        return _autograd_grad(_as_tuple(result), primals, _as_tuple(cotangents))

    return result, wrapped


def _ref_jvp(f, primals, tangents):
    with fwAD.dual_level():
        duals = tuple(fwAD.make_dual(p, t) for p, t in zip(primals, tangents))
        result_duals, spec = tree_flatten(f(*duals))
        primals_out, tangents_out = zip(*(fwAD.unpack_dual(d) for d in result_duals))
        return tree_unflatten(primals_out, spec), tree_unflatten(tangents_out, spec)


def _get_vjpfull_variant(f, sample, cotangents=None):
    """g(*primals, *cotangents) = vjp of f (functorch's get_vjpfull_variant); also its args."""
    fn, primals = _normalize_op_input_output(f, sample)
    if cotangents is None:
        result = fn(*primals)
        cotangents = _as_tuple(tree_map(lambda x: torch.randn_like(x, requires_grad=True), result))
    num_primals = len(primals)

    @functools.wraps(fn)
    def wrapped(*args):
        primals, cotangents = args[:num_primals], args[num_primals:]
        result, vjp_fn = vjp(fn, *primals)
        if isinstance(result, torch.Tensor):
            assert len(cotangents) == 1
            cotangents = cotangents[0]
        return vjp_fn(cotangents)

    return wrapped, (*primals, *cotangents)


def _get_vjp_fn_and_args_with_cotangents(f, sample, cotangents):
    """g(*args, *cotangents) computing vjps (functorch's helper of the same name)."""
    args = tuple([sample.input, *sample.args])
    kwargs = sample.kwargs
    flat_args, args_spec = tree_flatten(args)
    flat_cotangents, cotangents_spec = tree_flatten(cotangents)

    @functools.wraps(f)
    def wrapped(*args):
        assert len(args) == len(flat_args) + len(flat_cotangents)
        actual_args = tree_unflatten(args[: len(flat_args)], args_spec)
        cots = tree_unflatten(args[len(flat_args) :], cotangents_spec)
        # the differentiable positions are those of the sample (requires_grad)
        flat_actual, spec = tree_flatten(actual_args)
        diff_argnums = tuple(i for i, s in enumerate(flat_args) if _diff_arg(s))

        def fn(*primals):
            _args = list(flat_actual)
            for num, arg in zip(diff_argnums, primals):
                _args[num] = arg
            out = f(*tree_unflatten(_args, spec), **kwargs)
            return sample.output_process_fn_grad(out)

        primals = tuple(flat_actual[i] for i in diff_argnums)
        _, vjp_fn = vjp(fn, *primals)
        return vjp_fn(cots)

    return wrapped, tuple(flat_args + flat_cotangents)


def _get_jvp_variant_primals_tangents(f, sample):
    """g(*primals, *tangents) = (out, tangent_out) (functorch's helper of the same name)."""
    fn, primals = _normalize_op_input_output(f, sample, requires_grad=False)
    tangents = _as_tuple(tree_map(lambda x: torch.randn_like(x), primals))

    @functools.wraps(fn)
    def wrapped(*args):
        primals_in, tangents_in = args[: len(primals)], args[len(primals) :]
        primals_out, tangents_out = jvp(fn, primals_in, tangents_in)
        if isinstance(primals_out, torch.Tensor):
            return (primals_out, tangents_out)
        flat_primals_out, _ = tree_flatten(primals_out)
        flat_tangents_out, _ = tree_flatten(tangents_out)
        return tuple(flat_primals_out + flat_tangents_out)

    return wrapped, primals + tangents


def _get_bdim_choices(num_tensors):
    choices = [(0,) * num_tensors]
    choices.extend(itertools.product((-1, None), repeat=num_tensors))
    assert choices[-1] == (None,) * num_tensors
    return tuple(choices[:-1])


def _add_batch_dim(arg, bdim, batch_size):
    if bdim == 0:
        shape = [1] * arg.dim()
        shape.insert(0, batch_size)
        return arg.repeat(shape)
    return arg.unsqueeze(-1).expand(*arg.shape, batch_size).contiguous()


def _generate_vmap_inputs(arg_values, kwarg_values, batch_size=2):
    flat_args, arg_spec = tree_flatten(tuple(arg_values))
    is_tensors = [isinstance(a, torch.Tensor) for a in flat_args]
    for bdim_choice in _get_bdim_choices(sum(is_tensors)):
        bdims = iter(bdim_choice)
        flat_in_dims = [next(bdims) if is_t else None for is_t in is_tensors]
        flat_batched = tuple(
            a if d is None else _add_batch_dim(a, d, batch_size)
            for a, d in zip(flat_args, flat_in_dims)
        )
        yield (
            tree_unflatten(flat_batched, arg_spec),
            tree_unflatten(flat_in_dims, arg_spec),
            kwarg_values,
        )


def _get_fallback_and_vmap_exhaustive(op, arg_values, kwarg_values):
    """Pairs (vmap result, expected) as functorch's get_fallback_and_vmap_exhaustive yields
    them: vmap over every choice of batched arguments (dim 0, dim -1, unbatched), expected
    being the unbatched result expanded; and vmap of vmap against the vmap result."""
    out_dim, batch_size = 0, 2

    def make_batched(t):
        if isinstance(t, torch.Tensor):
            shape = list(t.shape)
            shape.insert(out_dim, batch_size)
            return t.expand(*shape)
        return t

    expected_batched = tree_map(make_batched, op(*arg_values, **kwarg_values))
    for batched_args, in_dims, kwargs in _generate_vmap_inputs(
        arg_values, kwarg_values, batch_size
    ):
        batched_out = vmap(op, in_dims=in_dims, out_dims=out_dim)(*batched_args, **kwargs)
        yield batched_out, expected_batched

        # vmap of vmap, the inner one over no batched argument
        def f(dummy, *args, **kwargs):
            return op(*args, **kwargs)

        dummy = torch.ones(batch_size, 1)
        vmapvmap_expected = tree_map(
            lambda x: x.unsqueeze(1) if isinstance(x, torch.Tensor) else x, batched_out
        )
        inner_in_dims = (0, *tree_map(lambda x: None, in_dims))
        outer_in_dims = (0, *in_dims)
        vmapvmap_output = vmap(
            vmap(f, inner_in_dims, out_dims=out_dim), outer_in_dims, out_dims=out_dim
        )(dummy, *batched_args, **kwargs)
        yield vmapvmap_output, vmapvmap_expected


class TestOperators(TestCase):
    """test/functorch/test_ops.py TestOperators, on kldiv.torch.kl_div; every test also
    compares kldiv's numbers with those of torch's own kl_div for the same inputs."""

    @_functorch_ops([KLDIV_OPINFO])
    def test_grad(self, device, dtype, op):
        for sample in op.sample_inputs(device, dtype, requires_grad=True):
            args = [sample.input, *sample.args]
            kwargs = sample.kwargs
            noncontig_sample = sample.noncontiguous()
            noncontig_args = [noncontig_sample.input, *noncontig_sample.args]
            diff_argnums = tuple(i for i, arg in enumerate(args) if _diff_arg(arg))
            assert len(diff_argnums) > 0
            diff_args = tuple(args[i] for i in diff_argnums)

            def wrapped_fn(*args, _f=op, _process=sample.output_process_fn_grad, **kwargs):
                return _process(_f(*args, **kwargs)).sum()

            result = grad(wrapped_fn, diff_argnums)(*args, **kwargs)
            result_noncontig = grad(wrapped_fn, diff_argnums)(*noncontig_args, **kwargs)
            expected = _autograd_grad(_as_tuple(wrapped_fn(*args, **kwargs)), diff_args)
            self.assertEqual(result, expected)
            self.assertEqual(result_noncontig, expected)
            reference = _autograd_grad(
                _as_tuple(wrapped_fn(*args, _f=TORCH_KL_DIV, **kwargs)), diff_args
            )
            self.assertEqual(result, reference)

    @_functorch_ops([KLDIV_OPINFO])
    def test_jvp(self, device, dtype, op):
        if not op.supports_forward_ad:
            self.skipTest("Skipped! Forward AD not supported.")
        for sample in op.sample_inputs(device, dtype, requires_grad=True):
            args = (sample.input, *sample.args)
            kwargs = sample.kwargs
            process = sample.output_process_fn_grad
            contig_fn, primals = _normalize_op_input_output2(op, args, kwargs, process)
            primals = tree_map(lambda x: x.detach(), primals)
            tangents = tree_map(lambda x: torch.randn_like(x), primals)

            noncontig_sample = sample.noncontiguous()
            noncontig_args = (noncontig_sample.input, *noncontig_sample.args)
            noncontig_fn, nc_primals = _normalize_op_input_output2(
                op, noncontig_args, kwargs, process
            )
            noncontig_primals = tree_map(lambda x: x.detach(), nc_primals)
            noncontig_tangents = tree_map(lambda x: noncontiguous_like(x), tangents)

            expected_primal_outs, expected_tangent_outs = _ref_jvp(contig_fn, primals, tangents)
            primal_outs, tangent_outs = jvp(contig_fn, primals, tangents)
            nc_primal_outs, nc_tangent_outs = jvp(
                noncontig_fn, noncontig_primals, noncontig_tangents
            )
            self.assertEqual(primal_outs, expected_primal_outs)
            self.assertEqual(tangent_outs, expected_tangent_outs)
            self.assertEqual(nc_primal_outs, expected_primal_outs)
            self.assertEqual(nc_tangent_outs, expected_tangent_outs)

            torch_fn, _ = _normalize_op_input_output2(TORCH_KL_DIV, args, kwargs, process)
            ref_primal_outs, ref_tangent_outs = _ref_jvp(torch_fn, primals, tangents)
            self.assertEqual(primal_outs, ref_primal_outs)
            self.assertEqual(tangent_outs, ref_tangent_outs)

    @_functorch_ops([KLDIV_OPINFO])
    def test_vjp(self, device, dtype, op):
        if not op.supports_autograd:
            self.skipTest("Skipped! Autograd not supported.")
        for sample in op.sample_inputs(device, dtype, requires_grad=True):
            fn, primals = _normalize_op_input_output(op, sample)
            result = fn(*primals)
            cotangents = tree_map(lambda x: torch.randn_like(x), result)

            noncontig_fn, noncontig_primals = _normalize_op_input_output(op, sample.noncontiguous())
            noncontig_cotangents = tree_map(lambda x: noncontiguous_like(x), cotangents)

            out, vjp_fn = vjp(fn, *primals)
            self.assertEqual(out, result)
            result_vjps = vjp_fn(cotangents)

            out_noncontig, vjp_fn = vjp(noncontig_fn, *noncontig_primals)
            self.assertEqual(out_noncontig, result)
            noncontig_result_vjps = vjp_fn(noncontig_cotangents)

            _, vjp_fn = _ref_vjp(fn, *primals)
            expected_vjps = vjp_fn(cotangents)
            self.assertEqual(result_vjps, expected_vjps)
            self.assertEqual(noncontig_result_vjps, expected_vjps)

            torch_fn, _ = _normalize_op_input_output(TORCH_KL_DIV, sample)
            torch_out, vjp_fn = _ref_vjp(torch_fn, *primals)
            self.assertEqual(result, torch_out)
            self.assertEqual(result_vjps, vjp_fn(cotangents))

    @_functorch_ops([KLDIV_OPINFO])
    def test_vjpvjp(self, device, dtype, op):
        if not op.supports_autograd:
            self.skipTest("Skipped! Autograd not supported.")
        if not op.supports_gradgrad:
            self.skipTest("Skipped! Operation does not support gradgrad")
        for sample in op.sample_inputs(device, dtype, requires_grad=True):
            fn, args = _get_vjpfull_variant(op, sample)
            result = fn(*args)
            cotangents = tree_map(lambda x: torch.randn_like(x), result)

            _, vjp_fn = vjp(fn, *args)
            result_vjps = vjp_fn(cotangents)
            _, vjp_fn = _ref_vjp(fn, *args)
            expected_vjps = vjp_fn(cotangents)
            self.assertEqual(result_vjps, expected_vjps)

            # torch's vjp of vjp, for the same primals and cotangents
            num_primals = len(args) - 1
            torch_fn, _ = _get_vjpfull_variant(TORCH_KL_DIV, sample, args[num_primals:])
            torch_result, vjp_fn = _ref_vjp(torch_fn, *args)
            self.assertEqual(result, torch_result)
            self.assertEqual(result_vjps, vjp_fn(cotangents))

    @_functorch_ops([KLDIV_OPINFO])
    def test_jvpvjp(self, device, dtype, op):
        if not op.supports_autograd:
            self.skipTest("Skipped! Autograd not supported.")
        if not op.supports_fwgrad_bwgrad:
            self.skipTest("Skipped! Operation does not support fwgrad_bwgrad")
        for sample in op.sample_inputs(device, dtype, requires_grad=True):
            fn, primals = _normalize_op_input_output(op, sample)
            result = fn(*primals)
            cotangents = tree_map(lambda x: torch.randn_like(x), result)
            primals_tangents = tree_map(lambda x: torch.randn_like(x), primals)
            cotangents_tangents = tree_map(lambda x: torch.randn_like(x), cotangents)

            def push_vjp(primals, cotangents, fn=fn):
                _, vjp_fn = vjp(fn, *primals)
                return vjp_fn(cotangents)

            result = jvp(push_vjp, (primals, cotangents), (primals_tangents, cotangents_tangents))
            self.assertEqual(len(result), 2)

            def reference(fn, primals, cotangents, primals_tangents, cotangents_tangents):
                # forward AD over autograd's vjp
                with fwAD.dual_level():
                    primal_duals = tuple(map(fwAD.make_dual, primals, primals_tangents))
                    _, vjp_fn = _ref_vjp(fn, *primal_duals)
                    cotangent_duals = fwAD.make_dual(cotangents, cotangents_tangents)
                    flat_result, spec = tree_flatten(vjp_fn(cotangent_duals))
                    primals_out, tangents_out = zip(*[fwAD.unpack_dual(r) for r in flat_result])
                    tangents_out = [
                        torch.zeros_like(p) if t is None else t
                        for p, t in zip(primals_out, tangents_out)
                    ]
                    return tree_unflatten(primals_out, spec), tree_unflatten(tangents_out, spec)

            args = (primals, cotangents, primals_tangents, cotangents_tangents)
            self.assertEqual(result, reference(fn, *args))
            torch_fn, _ = _normalize_op_input_output(TORCH_KL_DIV, sample)
            self.assertEqual(result, reference(torch_fn, *args))

    @_functorch_ops([KLDIV_OPINFO])
    @toleranceOverride({torch.float32: tol(atol=1e-04, rtol=1e-04)})
    def test_vmapvjpvjp(self, device, dtype, op):
        if not op.supports_autograd:
            self.skipTest("Skipped! Autograd not supported.")
        if not op.supports_gradgrad:
            self.skipTest("Skipped! Operation does not support gradgrad")
        for sample in op.sample_inputs(device, dtype, requires_grad=True):
            fn, args = _get_vjpfull_variant(op, sample)
            result = fn(*args)
            cotangents, _ = tree_flatten(tree_map(lambda x: torch.randn_like(x), result))
            num_args = len(args)
            args_and_cotangents = tuple(args) + tuple(cotangents)

            def vjp_of_vjp(*args_and_cotangents, fn=fn, num_args=num_args):
                args = args_and_cotangents[:num_args]
                cotangents = args_and_cotangents[num_args:]
                result, vjp_fn = vjp(fn, *args)
                result_vjps = vjp_fn(cotangents)
                result, _ = tree_flatten(result)
                result_vjps, _ = tree_flatten(result_vjps)
                return (*result, *result_vjps)

            for loop_out, batched_out in _get_fallback_and_vmap_exhaustive(
                vjp_of_vjp, args_and_cotangents, {}
            ):
                self.assertEqual(loop_out, batched_out)

    @_functorch_ops([KLDIV_OPINFO])
    @toleranceOverride({torch.float32: tol(atol=1e-04, rtol=1e-04)})
    def test_vmapvjp(self, device, dtype, op):
        if not op.supports_autograd:
            self.skipTest("Skipped! Autograd not supported.")
        for sample in op.sample_inputs(device, dtype, requires_grad=True):
            fn0, primals = _normalize_op_input_output(op, sample)
            cotangents = tree_map(torch.randn_like, fn0(*primals))
            fn, args = _get_vjp_fn_and_args_with_cotangents(op, sample, cotangents)
            for loop_out, batched_out in _get_fallback_and_vmap_exhaustive(fn, args, {}):
                self.assertEqual(loop_out, batched_out)

    @_functorch_ops([KLDIV_OPINFO])
    @toleranceOverride({torch.float32: tol(atol=1e-04, rtol=1e-04)})
    def test_vmapjvpall(self, device, dtype, op):
        if not op.supports_forward_ad:
            self.skipTest("Skipped! Forward AD not supported.")
        for sample in op.sample_inputs(device, dtype, requires_grad=False):
            fn, args = _get_jvp_variant_primals_tangents(op, sample)
            for loop_out, batched_out in _get_fallback_and_vmap_exhaustive(fn, args, {}):
                self.assertEqual(loop_out, batched_out)


instantiate_device_type_tests(TestOperators, globals(), only_for="cpu")


class TestVmapOperatorsOpInfo(TestCase):
    """test/functorch/test_vmap.py TestVmapOperatorsOpInfo.test_vmap_exhaustive, on
    kldiv.torch.kl_div, plus the vmapped result against torch's unbatched kl_div."""

    @_functorch_ops([KLDIV_OPINFO])
    def test_vmap_exhaustive(self, device, dtype, op):
        for sample in op.sample_inputs(device, dtype, requires_grad=False):
            arg_values = [sample.input, *sample.args]
            kwarg_values = sample.kwargs
            for loop_out, batched_out in _get_fallback_and_vmap_exhaustive(
                op, arg_values, kwarg_values
            ):
                self.assertEqual(loop_out, batched_out)
            # the unbatched result vmap was compared with, against torch's
            self.assertEqual(
                op(*arg_values, **kwarg_values), TORCH_KL_DIV(*arg_values, **kwarg_values)
            )


instantiate_device_type_tests(TestVmapOperatorsOpInfo, globals(), only_for="cpu")


# --------------------------------------------------------------------------------------------
# test/test_modules.py: TestModule, on the ModuleInfo of nn.KLDivLoss with kldiv's module
# --------------------------------------------------------------------------------------------


def _traverse_obj(obj, func):
    if isinstance(obj, (tuple, list)):
        return type(obj)(_traverse_obj(o, func) for o in obj)
    if isinstance(obj, dict):
        return {name: _traverse_obj(o, func) for name, o in obj.items()}
    if isinstance(obj, torch.Tensor):
        return func(obj)
    return None


class TestModule(TestCase):
    """The test/test_modules.py TestModule tests that apply to a loss module without
    parameters (forward, non-contiguous, pickle, repr, grad, gradgrad), on
    kldiv.torch.KLDivLoss. PyTorch's ModuleInfo skips test_grad and test_gradgrad for
    KLDivLoss (its samples contain NaNs); its skips are kept."""

    precision = 1e-5
    rel_tol = 1e-5

    def _retain_grad(self, obj):
        def inner(o):
            if o.requires_grad:
                o.retain_grad()

        _traverse_obj(obj, inner)

    def _get_grads(self, obj):
        return _traverse_obj(obj, lambda o: o.grad if o.requires_grad else None)

    def _zero_grad(self, obj):
        def inner(o):
            if o.grad is not None:
                o.grad = None

        _traverse_obj(obj, inner)

    @modules([KLDIV_MODULEINFO])
    def test_forward(self, device, dtype, module_info, training):
        module_cls = module_info.module_cls
        module_inputs = module_info.module_inputs_func(
            module_info, device=device, dtype=dtype, requires_grad=False, training=training
        )
        for module_input in module_inputs:
            if module_input.forward_input is None:
                continue
            with freeze_rng_state():
                args, kwargs = (
                    module_input.constructor_input.args,
                    module_input.constructor_input.kwargs,
                )
                m = module_cls(*args, **kwargs)
                m.to(device).to(dtype)
                m.train(training)
                args, kwargs = module_input.forward_input.args, module_input.forward_input.kwargs
                outputs = m(*args, **kwargs)
                reference_fn = module_input.reference_fn
                if reference_fn is not None:
                    ref_outputs = reference_fn(m, *args, **kwargs)
                    self.assertEqual(outputs, ref_outputs)
                # {float: m.float, double: m.double}[dtype]() and forward again
                getattr(m, {torch.float32: "float", torch.float64: "double"}[dtype])()
                m(*args, **kwargs)

    @modules([KLDIV_MODULEINFO])
    def test_non_contiguous_tensors(self, device, dtype, module_info, training):
        module_cls = module_info.module_cls
        module_inputs = module_info.module_inputs_func(
            module_info, device=device, dtype=dtype, requires_grad=True, training=training
        )

        def _make_non_contiguous(obj):
            def inner(o):
                if o.dim() == 0:  # scalar tensors can not be made non-contiguous
                    return o
                out = torch.repeat_interleave(o, 2, dim=-1)[..., ::2].detach()
                out.requires_grad = o.requires_grad
                return out

            return _traverse_obj(obj, inner)

        def _can_be_noncontiguous(obj):
            if isinstance(obj, (tuple, list)):
                return any(_can_be_noncontiguous(o) for o in obj)
            if isinstance(obj, dict):
                return any(_can_be_noncontiguous(o) for o in obj.values())
            return isinstance(obj, torch.Tensor) and obj.dim() != 0

        for module_input in module_inputs:
            if module_input.forward_input is None:
                continue
            input_args, input_kwargs = (
                module_input.forward_input.args,
                module_input.forward_input.kwargs,
            )
            if not (_can_be_noncontiguous(input_args) or _can_be_noncontiguous(input_kwargs)):
                continue
            args, kwargs = (
                module_input.constructor_input.args,
                module_input.constructor_input.kwargs,
            )
            m = module_cls(*args, **kwargs)
            m.to(device).to(dtype)
            m.train(training)
            self._retain_grad((input_args, input_kwargs))

            with freeze_rng_state():
                default_output = m(*input_args, **input_kwargs)
                grad_output = default_output.clone().detach_().normal_()
                default_output.backward(grad_output, retain_graph=True)
            default_input_args_grad, default_input_kwargs_grad = copy.deepcopy(
                self._get_grads((input_args, input_kwargs))
            )

            nc_input_args, nc_input_kwargs = _make_non_contiguous((input_args, input_kwargs))
            nc_grad_output = _make_non_contiguous(grad_output)
            inputs = [(input_args, input_kwargs), (nc_input_args, nc_input_kwargs)]
            grads = [grad_output, nc_grad_output]
            for (in_args, in_kwargs), g_out in itertools.product(inputs, grads):
                g_out_copy = copy.deepcopy(g_out)
                self._zero_grad((in_args, in_kwargs))
                with freeze_rng_state():
                    out = m(*in_args, **in_kwargs)
                    out.backward(g_out_copy, retain_graph=True)
                input_args_grad, input_kwargs_grad = self._get_grads((in_args, in_kwargs))
                self.assertEqual(out, default_output)
                self.assertEqual(input_args_grad, default_input_args_grad, atol=1e-4, rtol=0)
                self.assertEqual(input_kwargs_grad, default_input_kwargs_grad, atol=1e-4, rtol=0)

    @modules([KLDIV_MODULEINFO])
    def test_pickle(self, device, dtype, module_info, training):
        module_cls = module_info.module_cls
        module_inputs = module_info.module_inputs_func(
            module_info, device=device, dtype=dtype, requires_grad=False, training=training
        )
        for module_input in module_inputs:
            if module_input.forward_input is None:
                continue
            with freeze_rng_state():
                args, kwargs = (
                    module_input.constructor_input.args,
                    module_input.constructor_input.kwargs,
                )
                m = module_cls(*args, **kwargs)
                m.to(device).to(dtype)
                m.train(training)
                args, kwargs = module_input.forward_input.args, module_input.forward_input.kwargs
                output = m(*args, **kwargs)
                with tempfile.TemporaryFile() as f:
                    torch.save(m, f)
                    f.seek(0)
                    m_copy = torch.load(f, weights_only=False)
                    self.assertEqual(output, m_copy(*args, **kwargs))

    @modules([KLDIV_MODULEINFO])
    def test_repr(self, device, dtype, module_info, training):
        module_cls = module_info.module_cls
        module_inputs = module_info.module_inputs_func(
            module_info, device=device, dtype=dtype, requires_grad=False, training=training
        )
        for module_input in module_inputs:
            args, kwargs = (
                module_input.constructor_input.args,
                module_input.constructor_input.kwargs,
            )
            m = module_cls(*args, **kwargs)
            m.to(device).to(dtype)
            m.train(training)
            m.__repr__()
            str(m)

    def _test_gradients_helper(self, device, dtype, module_info, training, check):
        module_cls = module_info.module_cls
        module_inputs = module_info.module_inputs_func(
            module_info, device=device, dtype=dtype, requires_grad=True, training=training
        )
        for module_input in module_inputs:
            if module_input.forward_input is None:
                continue
            args, kwargs = (
                module_input.constructor_input.args,
                module_input.constructor_input.kwargs,
            )
            m = module_cls(*args, **kwargs)
            m.to(device).to(dtype)
            m.train(training)
            params = tuple(m.parameters())
            input_args, input_kwargs = (
                module_input.forward_input.args,
                module_input.forward_input.kwargs,
            )
            other_kwargs = {
                n: o for n, o in input_kwargs.items() if not isinstance(o, torch.Tensor)
            }
            kwarg_tensors = [(n, o) for n, o in input_kwargs.items() if isinstance(o, torch.Tensor)]
            grad_input = input_args + params + tuple(obj for (_, obj) in kwarg_tensors)
            flat_input, flat_spec = tree_flatten(grad_input)
            n_args = len(input_args)

            def fn_to_gradcheck(
                *flat_input_and_params,
                m=m,
                spec=flat_spec,
                n=n_args,
                kt_=kwarg_tensors,
                ok=other_kwargs,
            ):
                input_and_params = tree_unflatten(flat_input_and_params, spec)
                new_input_args = input_and_params[:n]
                kwarg_args = input_and_params[-len(kt_) :] if kt_ else ()
                new_kwargs = {name: obj for (name, _), obj in zip(kt_, kwarg_args)}
                with freeze_rng_state():
                    output = m(*new_input_args, **new_kwargs, **ok)
                    return tree_flatten(output)[0]

            self.assertTrue(check(fn_to_gradcheck, flat_input, nondet_tol=0.0))

    @modules([KLDIV_MODULEINFO], allowed_dtypes=[torch.double])
    def test_grad(self, device, dtype, module_info, training):
        self._test_gradients_helper(device, dtype, module_info, training, gradcheck)

    @modules([m for m in [KLDIV_MODULEINFO] if m.supports_gradgrad], allowed_dtypes=[torch.double])
    def test_gradgrad(self, device, dtype, module_info, training):
        self._test_gradients_helper(device, dtype, module_info, training, gradgradcheck)


instantiate_device_type_tests(TestModule, globals(), only_for="cpu")


# --------------------------------------------------------------------------------------------
# test/test_nn.py on common_nn's KLDivLoss entries, with F.kl_div / nn.KLDivLoss patched
# --------------------------------------------------------------------------------------------

_reentry = threading.local()


def _kl_div_substitute(*args, **kwargs):
    """What torch.nn.functional.kl_div is, while a TestNN test runs: kldiv.torch.kl_div, except
    when kldiv.torch itself calls torch.nn.functional.kl_div (a fallback): that call gets
    PyTorch's own function, not kldiv's again (which would recurse without end).
    (kldiv.torch.KLDivLoss calls kldiv.torch.kl_div directly; a fallback from there goes
    through here once, then to PyTorch's.) test_kldiv_torch_is_monkeypatch_safe checks that
    kldiv.torch does not need this guard."""
    if getattr(_reentry, "active", False):
        return TORCH_KL_DIV(*args, **kwargs)
    _reentry.active = True
    try:
        return kt.kl_div(*args, **kwargs)
    finally:
        _reentry.active = False


class TestNN(common_nn.NNTestCase):
    """common_nn's NewModuleTest / CriterionTest entries for KLDivLoss, run as test/test_nn.py
    runs them (its TestNN helper methods), with torch.nn.functional.kl_div and
    torch.nn.KLDivLoss replaced by kldiv's for the duration of each test.

    PyTorch's KLDivLoss_no_batch_dim_{none,mean,sum} entries construct their module with a
    lambda that reads the loop variable ``reduction`` late, so all three run with
    reduction='sum' (in PyTorch too); they are kept as they are, and the
    ``..._reduction_bound`` copies run with the reduction their name says."""

    _do_cuda_memory_leak_check = True
    _do_cuda_non_default_stream = True

    def _forward(self, module, input):
        with freeze_rng_state():
            if isinstance(input, tuple):
                return module(*input)
            return module(input)

    def _backward(self, module, input, output, grad_output, create_graph=False):
        output.backward(grad_output, retain_graph=True, create_graph=create_graph)
        if isinstance(input, tuple):
            return tuple(i.grad.data if i.grad is not None else None for i in input)
        return input.grad.data if input.grad is not None else None

    def _forward_criterion(self, criterion, input, target, extra_args=None):
        if extra_args is None:
            extra_args = ()
        if isinstance(input, tuple):
            return criterion(*(input + (target,) + extra_args))
        return criterion(input, target, *extra_args)

    def _backward_criterion(
        self, criterion, input, output, target, gradOutput=None, extra_args=None
    ):
        if extra_args is None:
            extra_args = ()
        input_tuple = input if isinstance(input, tuple) else (input,)
        output_tuple = output if isinstance(output, tuple) else (output,)
        for i in input_tuple:
            if i.grad is not None:
                i.grad.data.zero_()
        args = input_tuple + (target,) + extra_args
        if gradOutput is None:
            gradOutput = torch.ones(())
        criterion(*args).backward(gradOutput.to(output_tuple[0]))
        if isinstance(input, tuple):
            return tuple(i.grad.data for i in input)
        return input.grad.data

    def _zero_grad_parameters(self, module):
        for p in module.parameters():
            if p.grad is not None:
                with torch.no_grad():
                    p.grad.zero_()
                p.grad.detach_()

    def _get_parameters(self, module):
        params, d_params = [], []
        for p in module.parameters():
            params.append(p)
            d_params.append(p.grad)
        return params, d_params


def _run_nn_test(self, test):
    num_threads = torch.get_num_threads()  # NewModuleTest sets 1, and restores it only on success
    try:
        with contextlib.ExitStack() as patches:
            patches.enter_context(
                mock.patch.object(torch.nn.functional, "kl_div", _kl_div_substitute)
            )
            patches.enter_context(mock.patch.object(torch.nn, "KLDivLoss", kt.KLDivLoss))
            test(self)
    finally:
        torch.set_num_threads(num_threads)


def _add_nn_test(test):
    name = test.get_name()
    assert not hasattr(TestNN, name), f"Found two tests with the same name: {name}"
    setattr(TestNN, name, lambda self, test=test: _run_nn_test(self, test))


def _kldiv_nn_entries():
    new_module = [
        p for p in common_nn.get_new_module_tests() if "KLDivLoss" in p.get("fullname", "")
    ]
    criterion = [
        p
        for p in common_nn.criterion_tests
        if "KLDivLoss" in p.get("fullname", "") or p.get("module_name") == "KLDivLoss"
    ]
    return new_module, criterion


_NEW_MODULE_ENTRIES, _CRITERION_ENTRIES = _kldiv_nn_entries()


def test_common_nn_kldiv_entries_found():
    """TestNN runs every KLDivLoss entry of common_nn: check they are the ones expected (a
    renamed or new entry in a later PyTorch shows here rather than going unnoticed)."""
    found = {p.get("fullname") for p in _NEW_MODULE_ENTRIES + _CRITERION_ENTRIES}
    assert found == {
        "KLDivLoss_with_target_no_reduce",
        "KLDivLoss_no_reduce",
        "KLDivLoss_no_reduce_scalar",
        "KLDivLoss_with_log_target_no_reduce",
        "KLDivLoss_no_reduce_log_target",
        "KLDivLoss_no_reduce_scalar_log_target",
        "KLDivLoss_no_batch_dim_none",
        "KLDivLoss_no_batch_dim_mean",
        "KLDivLoss_no_batch_dim_sum",
    }


for _params in _NEW_MODULE_ENTRIES:
    _params = dict(_params)
    if "constructor" not in _params:
        _params["constructor"] = getattr(torch.nn, _params.pop("module_name"))
    _params.pop("decorator", None)
    _add_nn_test(common_nn.NewModuleTest(**_params))
for _params in _CRITERION_ENTRIES:
    _params = dict(_params)
    if "constructor" not in _params:
        _name = _params.pop("module_name")
        _params["constructor"] = lambda *a, _name=_name, **k: getattr(torch.nn, _name)(*a, **k)
    _params.pop("decorator", None)
    _add_nn_test(common_nn.CriterionTest(**_params))
    if _params["fullname"].startswith("KLDivLoss_no_batch_dim_"):
        _reduction = _params["fullname"].rsplit("_", 1)[1]
        _bound = dict(_params, fullname=_params["fullname"] + "_reduction_bound")
        _bound["constructor"] = lambda _r=_reduction: torch.nn.KLDivLoss(reduction=_r)
        _add_nn_test(common_nn.CriterionTest(**_bound))


# --------------------------------------------------------------------------------------------
# kldiv.torch under monkeypatching
# --------------------------------------------------------------------------------------------


def _kldiv_computations(dtype):
    """Forward, backward, double backward and forward AD of kldiv.torch.kl_div/KLDivLoss on
    fixed inputs, each as its result or the name of the exception it raised."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64).log_softmax(-1).to(dtype)
    t = torch.randn(3, 4, generator=g, dtype=torch.float64).softmax(-1).to(dtype)
    out = {}

    def attempt(key, f):
        try:
            out[key] = f()
        except Exception as e:  # noqa: BLE001 - recorded, and compared below
            out[key] = type(e).__name__

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for reduction in ("none", "sum", "batchmean"):
            xs, ts = x.clone().requires_grad_(), t.clone().requires_grad_()

            def fwd(xs=xs, ts=ts, reduction=reduction):
                return kt.kl_div(xs, ts, reduction=reduction).detach()

            def module(xs=xs, ts=ts, reduction=reduction):
                return kt.KLDivLoss(reduction=reduction)(xs, ts).detach()

            def bwd(xs=xs, ts=ts, reduction=reduction):
                y = kt.kl_div(xs, ts, reduction=reduction)
                return torch.autograd.grad(y, (xs, ts), torch.ones_like(y))

            def bwd2(xs=xs, ts=ts, reduction=reduction):
                y = kt.kl_div(xs, ts, reduction=reduction)
                gx, _ = torch.autograd.grad(y, (xs, ts), torch.ones_like(y), create_graph=True)
                return torch.autograd.grad(gx.sum(), (xs, ts), allow_unused=True)

            def fwd_ad(reduction=reduction):
                with fwAD.dual_level():
                    dual = fwAD.make_dual(x, torch.ones_like(x))
                    return fwAD.unpack_dual(kt.kl_div(dual, t, reduction=reduction)).tangent

            for key, f in (("fwd", fwd), ("module", module), ("bwd", bwd), ("bwd2", bwd2)):
                attempt((key, reduction), f)
            attempt(("fwd_ad", reduction), fwd_ad)
    return out


@pytest.mark.parametrize(
    "dtype",
    [torch.float16, torch.bfloat16, torch.float32, torch.float64],
    ids=lambda d: str(d).split(".")[-1],
)
def test_kldiv_torch_is_monkeypatch_safe(dtype):
    """With torch.nn.functional.kl_div and torch.nn.KLDivLoss replaced by kldiv's (as a user
    does to make a code base use kldiv, and as TestNN does without its guard), kldiv.torch
    must compute what it computes unpatched: its fallbacks (float16/bfloat16 here) and
    anything else it delegates to PyTorch must reach PyTorch's own kl_div, not kldiv's again.
    """
    unpatched = _kldiv_computations(dtype)
    with contextlib.ExitStack() as patches:
        patches.enter_context(mock.patch.object(torch.nn.functional, "kl_div", kt.kl_div))
        patches.enter_context(mock.patch.object(torch.nn, "KLDivLoss", kt.KLDivLoss))
        patched = _kldiv_computations(dtype)
    for key, expected in unpatched.items():
        got = patched[key]
        if isinstance(expected, str) or isinstance(got, str):

            def show(v):
                return v if isinstance(v, str) else "a result"

            assert got == expected, (
                f"{key}, {dtype}: {show(expected)} unpatched, but "
                f"{show(got)} with torch.nn.functional.kl_div patched to "
                "kldiv.torch.kl_div: kldiv.torch must call PyTorch's own kl_div (taken at "
                "import) wherever it delegates to it"
            )
        else:
            torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True, msg=str(key))
