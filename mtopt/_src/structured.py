r"""The structured Gramian engine: the Gramian from layer inputs and output cotangents.

For a dense layer :math:`y = x W` with output cotangents :math:`d_i = \partial L_i /
\partial y`, task i's weight gradient is :math:`x^\top d_i`, so the layer's Gramian
block and its share of the combined gradient are

.. math::
    G_{ij} = \langle x^\top d_i, x^\top d_j \rangle
           = \langle d_i, (x x^\top) d_j \rangle, \qquad
    \nabla_W \textstyle\sum_i w_i L_i = x^\top \textstyle\sum_i w_i d_i ,

and no per-task weight gradient is needed. The engine applies this to any JAX
loss function without asking the user to tag layers:

1. The function is traced to a jaxpr (calls such as ``jax.jit`` inlined). Every
   value is classified as *static* (computed from the parameters and constants
   alone: the parameters themselves, ``W.T``, ``W.astype(bf16)``, a broadcast bias)
   or an *activation* (anything that depends on the data).
2. A *site* is an equation that consumes both: ``dot_general`` (dense layers,
   einsum heads, attention projections), ``conv_general_dilated``, ``gather``
   (embeddings), ``mul`` / ``add`` (normalisation scales and biases), and any
   other primitive, ``lax.scan`` and custom derivatives included, taken whole.
   A zero perturbation is added to each site's output, and one reverse pass per
   task with respect to those perturbations only (batched over the tasks) gives
   every site's output cotangents :math:`d_i`: the backward pass through the
   activations, without any weight gradient.
3. Parameter leaves are grouped by the sites they reach (a leaf used at several
   sites, as tied or re-used weights are, is one group with all of its sites).
   Per group the Gramian block is formed by the cheaper exact formula:

   - *kernel*: one leaf, every site a ``dot_general`` whose parameter operand is a
     reshape / transpose / cast of the leaf with the same layout at every site,
     no batch dimension on it: :math:`\langle D_i, (X X^\top) D_j\rangle` with
     the rows of all sites stacked (N rows, contraction k, outputs m; cost
     :math:`N^2 k + T N^2 m + T^2 N m`);
   - *explicit*: the T per-task gradients of the group's leaves from the sites'
     own derivative rules applied to the cotangents (cost about
     :math:`T N k m + T^2 k m` for a dense layer), one group at a time.

4. The combined gradient is each site's derivative rule applied once to
   :math:`\sum_i w_i d_i` (one weight-gradient product per site), plus the
   penalty's gradient.

Exactness does not rest on recognising a layer: every site's derivative is
JAX's own, whatever the primitive, so an unrecognised one costs its explicit
per-task gradients and never gives another answer.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from mtopt._src import base, data_parallel, gramian as gramian_lib, jacobian as jacobian_lib

Array = jax.Array
PyTree = Any

# Call primitives whose body is evaluated inline when a parameter reaches it.
_CALLS = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr",
          "core_call": "call_jaxpr", "checkpoint": "jaxpr", "remat": "jaxpr"}
# Primitives that only rearrange or cast their operand (bijective on its entries).
_REARRANGE = {"reshape", "transpose", "convert_element_type", "squeeze", "copy", "copy_p",
              "expand_dims"}


def bind(eqn: Any, invals: list[Any]) -> list[Any]:
    """Evaluate one jaxpr equation on values, as ``jax.core.eval_jaxpr`` does."""
    params = eqn.primitive.get_bind_params(eqn.params)
    subfuns: Any = ()
    if isinstance(params, tuple):  # older jax: (subfuns, params)
        subfuns, params = params
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*subfuns, *invals, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


class Static:
    """A value computed from the parameters and constants alone.

    ``compute(leaf_values, memo)`` recomputes it from the parameter leaves it
    depends on (``leaves``: their flat indices), so that its derivative with
    respect to them can be taken; ``layout`` is the chain of rearranging
    equations that made it from a single leaf, or ``None`` when it is not one.
    """

    __slots__ = ("value", "leaves", "compute", "layout")

    def __init__(self, value: Any, leaves: frozenset, compute: Callable, layout: Optional[tuple]):
        self.value = value
        self.leaves = leaves
        self.compute = compute
        self.layout = layout


def _constant(value: Any) -> Static:
    return Static(value, frozenset(), lambda leaf_values, memo: value, None)


def _leaf(index: int, value: Any) -> Static:
    return Static(value, frozenset([index]), lambda leaf_values, memo: leaf_values[index], ())


def _static_eqn(eqn: Any, ins: list[Static], outs: list[Any]) -> list[Static]:
    leaves = frozenset().union(*(x.leaves for x in ins))
    cache: list = []

    def compute_all(leaf_values: dict, memo: dict) -> list[Any]:
        key = id(cache)
        if key not in memo:
            memo[key] = bind(eqn, [x.compute(leaf_values, memo) for x in ins])
        return memo[key]

    layout = None
    with_leaves = [x for x in ins if x.leaves]
    if (len(with_leaves) == 1 and with_leaves[0].layout is not None and len(outs) == 1
            and _rearranges(eqn)):
        layout = with_leaves[0].layout + ((eqn.primitive.name, _params_key(eqn.params)),)
    return [
        Static(out, leaves, (lambda k: lambda lv, memo: compute_all(lv, memo)[k])(k), layout)
        for k, out in enumerate(outs)
    ]


def _rearranges(eqn: Any) -> bool:
    name = eqn.primitive.name
    if name == "reshape":
        return eqn.params.get("dimensions") is None
    if name == "broadcast_in_dim":
        (operand,) = [v.aval for v in eqn.invars[:1]]
        return math.prod(operand.shape) == math.prod(eqn.params["shape"])
    return name in _REARRANGE


def _params_key(params: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


class Site(NamedTuple):
    """An equation where parameters meet activations.

    ``inputs`` holds, per operand, a :class:`Static` or the index of the
    activation value recorded in the forward pass; ``outputs`` the positions of
    its floating outputs (the ones that carry a cotangent), ``avals`` their shapes
    and the mesh axes they vary over; ``eqn`` is ``None``
    for a task-loss vector computed from the parameters alone (the identity site).
    """

    eqn: Any
    inputs: tuple
    outputs: tuple[int, ...]
    avals: tuple

    @property
    def leaves(self) -> frozenset:
        return frozenset().union(*(x.leaves for x in self.inputs if isinstance(x, Static)))

    def apply(self, acts: list[Any], leaf_values: dict, memo: dict) -> list[Any]:
        ins = [x.compute(leaf_values, memo) if isinstance(x, Static) else acts[x]
               for x in self.inputs]
        outs = ins if self.eqn is None else bind(self.eqn, ins)
        return [outs[k] for k in self.outputs]


class _Tracer:
    """Runs a jaxpr on values, classifying them, and perturbs every site's output."""

    def __init__(self, eps: Optional[list[Array]]):
        self.eps = eps  # None: the shape pass, which records the site outputs' avals
        self.sites: list[Site] = []
        self.acts: list[Any] = []

    def run(self, jaxpr: Any, consts: list[Any], invals: list[Any]) -> list[Any]:
        env: dict = {}

        def read(v: Any) -> Any:
            return _constant(v.val) if isinstance(v, jcore.Literal) else env[v]

        for var, val in zip(jaxpr.constvars, consts):
            env[var] = val
        for var, val in zip(jaxpr.invars, invals):
            env[var] = val
        for eqn in jaxpr.eqns:
            outs = self.equation(eqn, [read(v) for v in eqn.invars])
            for var, val in zip(eqn.outvars, outs):
                env[var] = val
        return [read(v) for v in jaxpr.outvars]

    def equation(self, eqn: Any, ins: list[Any]) -> list[Any]:
        static = [isinstance(x, Static) for x in ins]
        with_params = any(isinstance(x, Static) and x.leaves for x in ins)
        if not with_params:
            values = bind(eqn, [x.value if isinstance(x, Static) else x for x in ins])
            if all(static):
                return [_constant(v) for v in values]
            return values
        name = eqn.primitive.name
        if name in _CALLS:
            inner = eqn.params[_CALLS[name]]
            if isinstance(inner, jcore.ClosedJaxpr):
                return self.run(inner.jaxpr, [_constant(c) for c in inner.consts], ins)
            return self.run(inner, [], ins)
        if all(static):
            return _static_eqn(eqn, ins, bind(eqn, [x.value for x in ins]))
        return self.site(eqn, ins)

    def site(self, eqn: Any, ins: list[Any]) -> list[Any]:
        inputs = []
        for x in ins:
            if isinstance(x, Static):
                inputs.append(x if x.leaves else _constant(x.value))
            else:
                inputs.append(len(self.acts))
                self.acts.append(x)
        outs = bind(eqn, [x.value if isinstance(x, Static) else x for x in ins])
        return self.perturb(Site(eqn, tuple(inputs), (), ()), outs)

    def perturb(self, site: Site, outs: list[Any]) -> list[Any]:
        floating = tuple(k for k, o in enumerate(outs) if jnp.issubdtype(o.dtype, jnp.inexact))
        avals = tuple((jax.ShapeDtypeStruct(jnp.shape(outs[k]), outs[k].dtype),
                       data_parallel.varying_axes(outs[k])) for k in floating)
        start = sum(len(s.outputs) for s in self.sites)
        self.sites.append(site._replace(outputs=floating, avals=avals))
        if self.eps is None:
            return outs
        outs = list(outs)
        for j, k in enumerate(floating):
            outs[k] = outs[k] + self.eps[start + j]
        return outs

    def output(self, value: Any) -> Any:
        """A task-loss vector computed from the parameters alone becomes an identity site."""
        if isinstance(value, Static) and value.leaves:
            return self.perturb(Site(None, (value,), (), ()), [value.value])[0]
        return value.value if isinstance(value, Static) else value


class Traced(NamedTuple):
    jaxpr: Any
    consts: list[Any]
    meta: dict
    aux_tree: Any


def trace(
    fn: Callable[..., Any], params: PyTree, args: tuple, kwargs: dict, has_aux: bool
) -> tuple[Traced, list[Any], list[Any]]:
    """The loss function as a jaxpr whose inputs are the parameter leaves, then the
    array leaves of the arguments (the data, hence activations)."""
    param_leaves, param_tree = jax.tree.flatten(params)
    data, data_tree = jax.tree.flatten((args, kwargs))
    is_array = [hasattr(x, "dtype") and not isinstance(x, (bool, int, float)) for x in data]
    arrays = [x for x, a in zip(data, is_array) if a]
    meta: dict = {}
    box: dict = {}

    def flat(p_leaves: list, a_leaves: list) -> list:
        it = iter(a_leaves)
        leaves = [next(it) if a else x for x, a in zip(data, is_array)]
        a, k = data_tree.unflatten(leaves)
        objective = jacobian_lib.parsed_objective(fn, tuple(a), has_aux, meta, k)
        (losses, penalty), aux = objective(param_tree.unflatten(p_leaves))
        aux_leaves, box["aux_tree"] = jax.tree.flatten(aux)
        return [losses, penalty, *aux_leaves]

    closed = jax.make_jaxpr(flat)(param_leaves, arrays)
    traced = Traced(closed.jaxpr, list(closed.consts), meta, box["aux_tree"])
    return traced, param_leaves, arrays


def forward(traced: Traced, param_leaves: list, arrays: list, eps: Optional[list]) -> tuple:
    """Run the traced function; returns ``(tracer, losses, penalty, aux_leaves)``."""
    tracer = _Tracer(eps)
    ins = [_leaf(i, p) for i, p in enumerate(param_leaves)] + list(arrays)
    losses, penalty, *aux = tracer.run(traced.jaxpr, traced.consts, ins)
    losses = tracer.output(losses)
    aux = [a.value if isinstance(a, Static) else a for a in aux]
    return tracer, losses, penalty, aux


class Group(NamedTuple):
    """Parameter leaves that share sites, and those sites."""

    leaves: tuple[int, ...]
    sites: tuple[int, ...]


def groups(sites: list[Site]) -> list[Group]:
    """Connected components of the leaf - site graph, in order of first site."""
    parent: dict = {}

    def find(a: int) -> int:
        while parent.setdefault(a, a) != a:
            a = parent[a]
        return a

    for site in sites:
        leaves = sorted(site.leaves)
        for leaf in leaves[1:]:
            parent[find(leaf)] = find(leaves[0])
    order: dict = {}
    for s, site in enumerate(sites):
        root = find(min(site.leaves))
        order.setdefault(root, []).append(s)
    out = []
    for root, site_ids in order.items():
        leaves = sorted(frozenset().union(*(sites[s].leaves for s in site_ids)))
        out.append(Group(tuple(leaves), tuple(site_ids)))
    return out


class DenseView(NamedTuple):
    """A ``dot_general`` site seen as ``y (n, m) = x (n, k) @ P (k, m)``."""

    x_perm: tuple[int, ...]  # the activation's axes as (rows..., contraction...)
    y_perm: tuple[int, ...]  # the output's axes as (rows..., outputs...)
    n: int
    k: int
    m: int
    key: tuple  # the parameter's layout and contraction: equal keys share a kernel


def dense_view(site: Site) -> Optional[DenseView]:
    """The kernel form of a site, or ``None`` when the site is not a plain dense layer."""
    eqn = site.eqn
    if eqn is None or eqn.primitive.name != "dot_general" or len(site.outputs) != 1:
        return None
    (contract, batch) = eqn.params["dimension_numbers"]
    if batch[0] or batch[1]:
        return None
    kinds = [isinstance(x, Static) for x in site.inputs]
    if kinds.count(True) != 1:
        return None
    p = kinds.index(True)
    param = site.inputs[p]
    if param.layout is None:
        return None
    x_aval = eqn.invars[1 - p].aval
    p_aval = eqn.invars[p].aval
    cx, cp = tuple(contract[1 - p]), tuple(contract[p])
    fx = tuple(a for a in range(len(x_aval.shape)) if a not in cx)
    fp = tuple(a for a in range(len(p_aval.shape)) if a not in cp)
    n = math.prod(x_aval.shape[a] for a in fx)
    k = math.prod(x_aval.shape[a] for a in cx)
    m = math.prod(p_aval.shape[a] for a in fp)
    nx, npf = len(fx), len(fp)
    y_perm = tuple(range(nx + npf)) if p == 1 else tuple(range(npf, npf + nx)) + tuple(range(npf))
    key = (param.layout, tuple(p_aval.shape), cp, fp)
    return DenseView(fx + cx, y_perm, n, k, m, key)


def kernel_views(group: Group, sites: list[Site]) -> Optional[list[DenseView]]:
    """The dense views of a one-leaf group whose sites all share one kernel, else ``None``."""
    if len(group.leaves) != 1:
        return None
    views = [dense_view(sites[s]) for s in group.sites]
    if any(v is None for v in views) or len({v.key for v in views}) != 1:
        return None
    return views


def kernel_is_cheaper(views: list[DenseView], num_tasks: int) -> bool:
    """The per-group choice of formula, by multiply-add count."""
    rows = sum(v.n for v in views)
    k, m, t = views[0].k, views[0].m, num_tasks
    kernel = rows * rows * k + t * rows * rows * m + t * t * rows * m
    explicit = t * rows * k * m + t * t * k * m
    return kernel < explicit


class Engine(NamedTuple):
    """The result of the structured forward pass, ready for the Gramian and the pullback."""

    losses: Array
    penalty: Optional[Array]
    aux: Any
    names: Any
    given_order: Any
    gramian: Optional[Array]
    pull: Callable[[Array, Array], PyTree]


def _kernel_gramian(views: list[DenseView], site_ids: tuple, sites: list[Site], acts: list,
                    cots: list, num_tasks: int, dtype: Any) -> Array:
    """``<D_i, (X X^T) D_j>`` with the rows of every site of the group stacked."""
    xs, ds = [], []
    for view, s in zip(views, site_ids):
        site = sites[s]
        (act,) = [acts[x] for x in site.inputs if not isinstance(x, Static)]
        xs.append(jnp.transpose(act, view.x_perm).reshape(view.n, view.k).astype(dtype))
        d = cots[s][0][:num_tasks]
        perm = (0,) + tuple(a + 1 for a in view.y_perm)
        ds.append(jnp.transpose(d, perm).reshape(num_tasks, view.n, view.m).astype(dtype))
    x = jnp.concatenate(xs) if len(xs) > 1 else xs[0]
    d = jnp.concatenate(ds, axis=1) if len(ds) > 1 else ds[0]
    kd = jnp.matmul(x @ x.T, d)  # (T, N, m): one product with the N x N kernel
    return gramian_lib.cross_gramian(d, kd, dtype)


def find_sites(traced: Traced, param_leaves: list, arrays: list) -> list[Site]:
    """The shape pass: which sites the function has, and the avals of their outputs."""
    box: dict = {}

    def shapes(p_leaves: list, a_leaves: list) -> list:
        tracer, *_ = forward(traced, p_leaves, a_leaves, None)
        box["sites"] = tracer.sites
        return []

    jax.eval_shape(shapes, param_leaves, arrays)
    return box["sites"]


def kernel_share(
    fn: Callable[..., Any], params: PyTree, args: tuple, kwargs: dict, *, has_aux: bool,
    mask: PyTree,
) -> float:
    """The fraction of the Gramian's parameters (the ``mask`` leaves) whose blocks the
    kernel formula gives, at the model's shapes: what ``gramian="auto"`` decides on."""
    traced, param_leaves, arrays = trace(fn, params, args, kwargs, has_aux)
    sites = find_sites(traced, param_leaves, arrays)
    num_tasks = traced.jaxpr.outvars[0].aval.shape[0]
    shared = [bool(m) for m in jax.tree.leaves(mask)]
    total = by_kernel = 0
    for group in groups(sites):
        size = sum(math.prod(jnp.shape(param_leaves[i])) for i in group.leaves if shared[i])
        views = kernel_views(group, sites)
        total += size
        if views is not None and kernel_is_cheaper(views, num_tasks):
            by_kernel += size
    return by_kernel / total if total else 0.0


def run(
    fn: Callable[..., Any],
    params: PyTree,
    args: tuple,
    kwargs: dict,
    *,
    has_aux: bool,
    mask: PyTree,
    wants_gramian: bool,
    average: Optional[Callable[[PyTree], PyTree]] = None,
    formula: str = "auto",
) -> Engine:
    """One structured step: losses, the Gramian over the ``mask`` leaves, the pullback.

    ``formula`` is ``"auto"`` (the cheaper exact formula per group), or
    ``"kernel"`` / ``"explicit"`` to force one where it applies (for tests).
    """
    traced, param_leaves, arrays = trace(fn, params, args, kwargs, has_aux)
    param_tree = jax.tree.structure(params)
    shared = [bool(m) for m in jax.tree.leaves(mask)]
    avals = [a for site in find_sites(traced, param_leaves, arrays) for a in site.avals]
    box: dict = {}

    penalty_static: list = []

    def perturbed(eps: list) -> tuple:
        tracer, losses, penalty, aux = forward(traced, param_leaves, arrays, eps)
        box["sites"] = tracer.sites
        if isinstance(penalty, Static):
            penalty_static[:] = [penalty]
            return (losses,), (penalty.value, aux, tracer.acts)
        return (losses, penalty), (penalty, aux, tracer.acts)

    # Each perturbation varies over the mesh axes its site's output varies over
    # (inside shard_map), so that its cotangent stays local to the device.
    zeros = [data_parallel.vary(jnp.zeros(a.shape, a.dtype), axes) for a, axes in avals]
    outs, vjp_fn, (penalty, aux_leaves, acts) = jax.vjp(perturbed, zeros, has_aux=True)
    sites: list[Site] = box["sites"]
    losses = outs[0]
    num_tasks = losses.shape[0]
    has_penalty = traced.meta["has_penalty"]
    penalty_row = len(outs) == 2 and has_penalty
    rows = jnp.eye(num_tasks, dtype=losses.dtype)
    cot_rows: tuple = (data_parallel.match_varying(rows, losses),)
    if len(outs) == 2:
        pen_rows = jnp.zeros((num_tasks,), outs[1].dtype)
        if penalty_row:  # one more row, the penalty's cotangents, in the same batch
            cot_rows = (
                data_parallel.match_varying(
                    jnp.concatenate([rows, jnp.zeros((1, num_tasks), rows.dtype)]), losses),
                data_parallel.match_varying(
                    jnp.concatenate([pen_rows, jnp.ones((1,), pen_rows.dtype)]), outs[1]),
            )
        else:
            cot_rows = cot_rows + (data_parallel.match_varying(pen_rows, outs[1]),)
    (flat_cots,) = jax.vmap(vjp_fn)(cot_rows)
    cots, start = [], 0
    for site in sites:
        cots.append(flat_cots[start:start + len(site.outputs)])
        start += len(site.outputs)

    dtype = base.compute_dtype(losses)
    all_groups = groups(sites)
    gram = jnp.zeros((num_tasks, num_tasks), dtype) if wants_gramian else None

    def group_vjp(group: Group) -> Callable:
        def outputs(leaf_values: dict) -> list:
            memo: dict = {}
            return [o for s in group.sites for o in sites[s].apply(acts, leaf_values, memo)]

        values = {i: param_leaves[i] for i in group.leaves}
        primal, vjp = jax.vjp(outputs, values)

        def pullback(cot: list) -> tuple:  # inside shard_map: cotangents typed as the outputs
            return vjp([data_parallel.match_varying(c, o) for c, o in zip(cot, primal)])

        return pullback

    vjps = [group_vjp(g) for g in all_groups]
    for group, vjp in zip(all_groups, vjps):
        in_gramian = [i for i in group.leaves if shared[i]]
        if not wants_gramian or not in_gramian:
            continue
        views = kernel_views(group, sites)
        use_kernel = views is not None and average is None and (
            formula == "kernel" or (formula == "auto" and kernel_is_cheaper(views, num_tasks)))
        if use_kernel:
            block = _kernel_gramian(views, group.sites, sites, acts, cots, num_tasks, dtype)
        else:
            task_cots = [c[:num_tasks] for s in group.sites for c in cots[s]]
            (per_task,) = jax.vmap(vjp)(task_cots)
            per_task = {i: per_task[i] for i in in_gramian}
            if average is not None:
                per_task = average(per_task)
            block = gramian_lib.gramian(per_task).astype(dtype)
        gram = gram + block
    if wants_gramian:
        gram = jax.lax.stop_gradient(gram)

    penalty_grads = None
    if penalty_static and has_penalty:
        pen = penalty_static[0]
        if pen.leaves:
            pen_leaves = sorted(pen.leaves)
            _, pen_vjp = jax.vjp(lambda lv: pen.compute(lv, {}),
                                 {i: param_leaves[i] for i in pen_leaves})
            penalty_grads = pen_vjp(jnp.ones_like(pen.value))[0]

    def pull(w: Array, ws: Array) -> PyTree:
        grads: list = [None] * len(param_leaves)
        for group, vjp in zip(all_groups, vjps):
            flags = {shared[i] for i in group.leaves}
            variants = [(ws, True), (w, False)] if (ws is not w and len(flags) == 2) else [
                (ws if (ws is not w and flags == {True}) else w, None)]
            for weights, pick in variants:
                cot = []
                for s in group.sites:
                    for c in cots[s]:
                        combined = jnp.tensordot(weights.astype(c.dtype), c[:num_tasks], 1)
                        if penalty_row:
                            combined = combined + c[num_tasks]
                        cot.append(combined)
                (g,) = vjp(cot)
                for i, gi in g.items():
                    if pick is None or shared[i] == pick:
                        grads[i] = gi
        if penalty_grads is not None:
            for i, gi in penalty_grads.items():
                grads[i] = gi if grads[i] is None else grads[i] + gi
        grads = [jnp.zeros_like(p) if g is None else g.astype(p.dtype)
                 for g, p in zip(grads, param_leaves)]
        out = param_tree.unflatten(grads)
        return out if average is None else average(out)

    aux = jax.tree.unflatten(traced.aux_tree, aux_leaves) if has_aux else None
    return Engine(
        losses=losses, penalty=penalty if has_penalty else None, aux=aux,
        names=traced.meta["names"], given_order=traced.meta["given_order"], gramian=gram,
        pull=pull,
    )

