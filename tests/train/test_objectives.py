"""Pretraining objectives: hand-checked small cases, gradients, EMA updates, DDP equivalence."""

from __future__ import annotations

import copy
import itertools
import json
import math
import threading
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xsky.engine.prototypes import sinkhorn_knopp as sinkhorn_np
from xsky.engine.regions import SKYSENSE_GRID, Regions
from xsky.exceptions import ArgumentError, DataError
from xsky.models.satclip import LocationEncoder
from xsky.train.features import Features
from xsky.train.losses import clip_loss
from xsky.train.objectives import (
    DINO_PRESET,
    CrossModalAlignment,
    GeoPrototypeLoss,
    LocationImageCLIP,
    MultiGranularityContrastive,
    StepOutputs,
    cluster_objects,
    dino_loss,
    masked_mean,
    sinkhorn_knopp,
    teacher_momentum,
    teacher_temperature,
)
from xsky.train.views import View, align

D, W = 8, 4



def identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _random_view(b: int, seed: int) -> View:
    g = torch.Generator().manual_seed(seed)
    return View(torch.rand(b, generator=g) < 0.5, torch.randint(0, 4, (b,), generator=g))


def _outputs(b: int = 3, seed: int = 0, mods: tuple[str, ...] = (), n_views: int = 2,
             grad: bool = False, latlon: torch.Tensor | None = None) -> StepOutputs:
    """Student/teacher features of ``n_views`` views of canonical random maps (each view a
    random symmetry of them, plus noise drawn per view and network)."""
    g = torch.Generator().manual_seed(seed)
    canon = {s: torch.randn(b, D, W, W, generator=g) for s in ("fused", *mods)}
    valid = torch.rand(b, W, W, generator=g) > 0.2
    student, teacher, views = [], [], []
    for v in range(n_views):
        view = _random_view(b, seed * 100 + v)
        views.append(view)
        for out, scale in ((student, 0.1), (teacher, 0.3)):
            maps = {s: view.apply(x + scale * torch.randn(x.shape, generator=g))
                    for s, x in canon.items()}
            maps = {s: x.clone().requires_grad_(grad) for s, x in maps.items()}
            fused = maps.pop("fused")
            out.append(Features(fused, maps, view.apply(valid)))
    if latlon is None:
        latlon = torch.stack([torch.linspace(-60, 60, b), torch.linspace(-170, 170, b)], 1)
    return StepOutputs(student, teacher, views, {"latlon": latlon.double()})


def _small_mgc(**kw) -> MultiGranularityContrastive:
    torch.manual_seed(0)
    kw = {"out_dim": 16, "hidden_dim": 16, "bottleneck_dim": 8, "n_objects": 2, **kw}
    return MultiGranularityContrastive(D, **kw)


class FakeAllReduce:
    """``reduce`` functions of ``n`` simulated ranks (threads): the mean, like DDP's."""

    def __init__(self, n: int) -> None:
        self.n, self.slots = n, [None] * n
        self.barrier = threading.Barrier(n)

    def rank(self, r: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def reduce(t: torch.Tensor) -> torch.Tensor:
            self.slots[r] = t.clone()
            self.barrier.wait()
            out = sum(self.slots) / self.n
            self.barrier.wait()
            return out
        return reduce


def _after_step_in_ranks(objs: list, step: int, total: int) -> None:
    fake = FakeAllReduce(len(objs))
    threads = [threading.Thread(target=o.after_step, args=(step, total, fake.rank(r)))
               for r, o in enumerate(objs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _three_ways(base, a: StepOutputs, b: StepOutputs) -> tuple:
    """Copies of ``base`` updated once from micro-batches ``a`` then ``b`` (accumulated),
    from their union, and as two simulated ranks (rank 0 saw ``a``, rank 1 ``b``)."""
    accum, union, rank0, rank1 = (copy.deepcopy(base) for _ in range(4))
    accum(a), accum(b)
    accum.after_step(0, 10, identity)
    union(_cat(a, b))
    union.after_step(0, 10, identity)
    rank0(a), rank1(b)
    _after_step_in_ranks([rank0, rank1], 0, 10)
    return accum, union, rank0, rank1


def _cat(a: StepOutputs, b: StepOutputs) -> StepOutputs:
    def cat_f(x: Features, y: Features) -> Features:
        return Features(torch.cat([x.fused, y.fused]),
                        {m: torch.cat([x.modalities[m], y.modalities[m]]) for m in x.modalities},
                        torch.cat([x.valid, y.valid]))

    views = [View(torch.cat([u.flip, v.flip]), torch.cat([u.k, v.k]))
             for u, v in zip(a.views, b.views, strict=True)]
    return StepOutputs([cat_f(x, y) for x, y in zip(a.student, b.student, strict=True)],
                       [cat_f(x, y) for x, y in zip(a.teacher, b.teacher, strict=True)], views,
                       {"latlon": torch.cat([a.batch["latlon"], b.batch["latlon"]])})


# --------------------------------------------------------------------------------------
# schedules and small functions
# --------------------------------------------------------------------------------------
def test_teacher_momentum_is_a_cosine_from_0_996_to_1():
    assert teacher_momentum(0, 500) == pytest.approx(0.996, abs=1e-12)
    assert teacher_momentum(500, 500) == 1.0
    assert teacher_momentum(250, 500) == pytest.approx(0.998)
    m = [teacher_momentum(s, 100) for s in range(101)]
    assert all(a < b for a, b in itertools.pairwise(m))
    assert teacher_momentum(25, 100) == pytest.approx(1 - 0.004 * (1 + math.cos(math.pi / 4)) / 2)


def test_teacher_temperature_warms_up_linearly_from_0_04_to_0_07():
    assert teacher_temperature(0, 100) == pytest.approx(0.04)
    assert teacher_temperature(100, 100) == pytest.approx(0.07)
    assert teacher_temperature(10_000, 100) == pytest.approx(0.07)
    assert teacher_temperature(25, 100) == pytest.approx(0.0475)
    assert DINO_PRESET["warmup_teacher_temp"] == 0.04 and DINO_PRESET["teacher_temp"] == 0.07
    assert DINO_PRESET["student_temp"] == 0.1 and DINO_PRESET["center_momentum"] == 0.9
    assert DINO_PRESET["clip_grad"] == 3.0 and DINO_PRESET["momentum_teacher"] == 0.996


def test_dino_loss_of_known_logits_by_hand():
    s, t = [1.0, 0.0, -1.0], [0.5, 0.2, 0.0]
    c, ts, tt = [0.1, -0.2, 0.3], 0.1, 0.04
    z = [(ti - ci) / tt for ti, ci in zip(t, c, strict=True)]
    p = [math.exp(v) / sum(math.exp(u) for u in z) for v in z]  # teacher: centred, sharpened
    lse = math.log(sum(math.exp(v / ts) for v in s))
    expected = -sum(pi * (si / ts - lse) for pi, si in zip(p, s, strict=True))
    got = dino_loss(torch.tensor([s]), torch.tensor([t]), torch.tensor(c), ts, tt)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # mean over rows
    two = dino_loss(torch.tensor([s, s]), torch.tensor([t, t]), torch.tensor(c), ts, tt)
    assert two.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("eps", [0.05, 0.3, 1e-3])
@pytest.mark.parametrize("n_iter", [0, 1, 3, 8])
def test_torch_sinkhorn_equals_the_numpy_prototype_code(eps, n_iter):
    rng = np.random.default_rng(int(eps * 1000) + n_iter)
    scores = rng.uniform(-1, 1, (9, 4))  # with eps=1e-3 the range is past exp's: log domain
    ref = sinkhorn_np(scores, eps, n_iter)
    got = sinkhorn_knopp(torch.from_numpy(scores), eps, n_iter)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-14)


def test_grouped_sinkhorn_equals_one_problem_per_group():
    rng = np.random.default_rng(5)
    scores = rng.uniform(-1, 1, (11, 3))
    groups = np.array([4, 4, 1, 1, 1, 4, 9, 1, 9, 9, 4])
    got = sinkhorn_knopp(torch.from_numpy(scores), 0.1, 3, groups=torch.from_numpy(groups))
    for grp in np.unique(groups):
        sel = groups == grp
        np.testing.assert_allclose(got.numpy()[sel], sinkhorn_np(scores[sel], 0.1, 3), rtol=1e-10)
    with pytest.raises(DataError, match="NaN"):
        sinkhorn_knopp(torch.tensor([[float("nan"), 0.0]]))


def test_cluster_objects_separates_two_regions_of_an_image():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(1, 2, 6, 6)
    x[0, 0, :, :3] = 1.0  # left half along e1, right half along e2, a little noise
    x[0, 1, :, 3:] = 1.0
    x = x + 0.05 * torch.randn(x.shape, generator=g)
    valid = torch.ones(1, 6, 6, dtype=torch.bool)
    valid[0, 0, 0] = False
    labels = cluster_objects(x, valid, 2)
    assert labels[0, 0, 0] == -1
    left, right = labels[0, :, :3][valid[0, :, :3]], labels[0, :, 3:]
    assert len(set(left.tolist())) == 1 and len(set(right.flatten().tolist())) == 1
    assert left[0] != right[0, 0]


# --------------------------------------------------------------------------------------
# multi-granularity contrastive
# --------------------------------------------------------------------------------------
def test_mgc_shapes_metrics_and_gradients_reach_only_the_student():
    obj = _small_mgc(modalities=("hr", "s2"))
    out = _outputs(mods=("s2",), grad=True)
    res = obj(out)
    assert res["loss"].ndim == 0 and torch.isfinite(res["loss"])
    assert {"fused/pixel", "fused/object", "fused/image", "s2/pixel", "s2/object",
            "s2/image"} <= set(res)
    res["loss"].backward()
    for f in out.student:
        assert f.fused.grad is not None and f.fused.grad.abs().sum() > 0
        assert f.modalities["s2"].grad.abs().sum() > 0
    for f in out.teacher:
        assert f.fused.grad is None and f.modalities["s2"].grad is None
    assert all(p.grad is None for p in obj.teacher_heads.parameters())
    assert obj.student_heads["fused_pixel"].mlp[0].weight.grad.abs().sum() > 0
    # heads of a modality the batch lacks get zero, not missing, gradients (DDP)
    hr = [p.grad for p in obj.student_heads["hr_image"].parameters()]
    assert all(g is not None and not g.any() for g in hr)


def test_mgc_ground_position_features_give_zero_pixel_disagreement():
    """Features that are a function of the ground position, seen through different
    symmetries: after align, the student's and teacher's pixels are the same, so with equal
    heads and temperatures the pixel loss is the entropy of the outputs (zero KL)."""
    obj = _small_mgc(granularities=("pixel",),
                     preset={"student_temp": 0.1, "teacher_temp": 0.1,
                             "warmup_teacher_temp": 0.1})
    b = 4
    g = torch.Generator().manual_seed(3)
    canon = torch.randn(b, D, W, W, generator=g)
    valid = torch.rand(b, W, W, generator=g) > 0.3
    views = [_random_view(b, 11), _random_view(b, 12)]
    assert not torch.equal(views[0].k, views[1].k)
    feats = [Features(v.apply(canon), {}, v.apply(valid)) for v in views]
    res = obj(StepOutputs(feats, feats, views, {}))
    with torch.no_grad():
        h = obj.student_heads["fused_pixel"](canon.permute(0, 2, 3, 1)[valid])
        p = F.softmax(h / 0.1, -1)
        entropy = -(p * p.log()).sum(1).mean()
    assert res["fused/pixel"].item() == pytest.approx(entropy.item(), rel=1e-5)


def test_mgc_uses_the_scheduled_teacher_temperature_and_the_centre():
    obj = _small_mgc(granularities=("image",))
    obj.step.fill_(500)  # half-way through the 1000-step warm-up: 0.055
    with torch.no_grad():
        obj.center.normal_()
    out = _outputs(b=4, seed=1)
    res = obj(out)
    tt = 0.04 + 0.5 * 0.03
    assert res["teacher_temp"].item() == pytest.approx(tt)
    terms = []
    for a, b in ((0, 1), (1, 0)):
        s, _ = masked_mean(align(out.student[a].fused, out.views[a]),
                           align(out.student[a].valid, out.views[a]))
        t, _ = masked_mean(align(out.teacher[b].fused, out.views[b]),
                           align(out.teacher[b].valid, out.views[b]))
        hs = obj.student_heads["fused_image"](s)
        ht = obj.teacher_heads["fused_image"](t)
        terms.append(dino_loss(hs, ht, obj.center[0], 0.1, tt))
    assert res["fused/image"].item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)


def test_mgc_objects_are_teacher_clusters_shared_by_both_networks():
    obj = _small_mgc(granularities=("object",), n_objects=3)
    out = _outputs(b=4, seed=8)
    res = obj(out)
    tt = obj.teacher_temp()
    terms = []
    for a, b in ((0, 1), (1, 0)):  # student view a against teacher view b
        s_map = align(out.student[a].fused, out.views[a])
        t_map = align(out.teacher[b].fused, out.views[b])
        both = align(out.student[a].valid, out.views[a]) & align(out.teacher[b].valid,
                                                                  out.views[b])
        labels = cluster_objects(t_map, both, 3)
        s_obj, t_obj = [], []
        for i in range(4):
            for k in range(3):
                sel = labels[i] == k
                if sel.any():
                    s_obj.append(s_map[i][:, sel].mean(1))
                    t_obj.append(t_map[i][:, sel].mean(1))
        hs = obj.student_heads["fused_object"](torch.stack(s_obj))
        ht = obj.teacher_heads["fused_object"](torch.stack(t_obj))
        terms.append(dino_loss(hs, ht, obj.center[0], 0.1, tt))
    assert res["fused/object"].item() == pytest.approx(torch.stack(terms).mean().item(),
                                                       rel=1e-5)


def test_mgc_centre_update_by_hand():
    obj = _small_mgc(granularities=("image",))
    out = _outputs(b=4, seed=2)
    obj(out)
    with torch.no_grad():
        t_out = []
        for b in (1, 0):  # the teacher view of each cross pair
            t, _ = masked_mean(align(out.teacher[b].fused, out.views[b]),
                               align(out.teacher[b].valid, out.views[b]))
            t_out.append(obj.teacher_heads["fused_image"](t))
        mean = torch.cat(t_out).mean(0)
    obj.after_step(0, 10, identity)
    torch.testing.assert_close(obj.center[0], 0.1 * mean, rtol=1e-5, atol=1e-7)
    assert int(obj.step) == 1


def test_mgc_teacher_heads_follow_the_momentum_schedule():
    obj = _small_mgc()
    before = [p.clone() for p in obj.teacher_heads.parameters()]
    with torch.no_grad():
        for p in obj.student_heads.parameters():
            p.add_(1.0)
    obj.after_step(0, 10, identity)
    for p0, p in zip(before, obj.teacher_heads.parameters(), strict=True):
        torch.testing.assert_close(p, p0 + 0.004)  # 0.996 * p0 + 0.004 * (p0 + 1)
    last = [p.clone() for p in obj.teacher_heads.parameters()]
    obj.after_step(10, 10, identity)  # momentum 1 at the end: unchanged
    for p0, p in zip(last, obj.teacher_heads.parameters(), strict=True):
        assert torch.equal(p, p0)


def test_mgc_centre_of_two_micro_batches_equals_their_union_and_two_ranks():
    a, b = _outputs(b=3, seed=4, mods=("s1",)), _outputs(b=2, seed=5, mods=("s1",))
    base = _small_mgc(modalities=("s1",))
    accum, union, rank0, rank1 = _three_ways(base, a, b)
    assert accum.center.abs().sum() > 0
    torch.testing.assert_close(accum.center, union.center, rtol=1e-5, atol=1e-7)
    # two ranks with one micro-batch each: the mean of sums over the mean of counts
    torch.testing.assert_close(rank0.center, accum.center, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(rank1.center, accum.center, rtol=1e-5, atol=1e-7)


def test_mgc_needs_two_views_and_config_is_json():
    obj = _small_mgc()
    with pytest.raises(ArgumentError, match="at least 2"):
        obj(_outputs(n_views=1))
    cfg = obj.config()
    assert json.loads(json.dumps(cfg)) == cfg and cfg["name"] == "mgc"
    assert {"center", "step"} <= set(obj.state_dict()) and any(
        k.startswith("teacher_heads.") for k in obj.state_dict())
    with pytest.raises(ArgumentError, match="unknown preset"):
        _small_mgc(preset={"teacher_tmp": 0.05})


# --------------------------------------------------------------------------------------
# cross-modal alignment
# --------------------------------------------------------------------------------------
def _const_features(values: dict[str, list[list[float] | None]], w: int = 2) -> Features:
    """Features whose modality maps are constant per window (None: the window lacks it)."""
    mods, mvalid = {}, {}
    for m, rows in values.items():
        dim = len(next(r for r in rows if r is not None))
        x = torch.tensor([r or [0.0] * dim for r in rows])[:, :, None, None].expand(-1, -1, w, w)
        mods[m] = x.clone()
        mvalid[m] = torch.tensor([r is not None for r in rows])[:, None, None].expand(-1, w, w)
    n = len(next(iter(values.values())))
    fused = torch.zeros(n, 2, w, w)
    return Features(fused, mods, torch.ones(n, w, w, dtype=torch.bool), mvalid)


def test_cross_modal_infonce_of_two_windows_by_hand():
    f = _const_features({"s2": [[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]],
                         "s1": [[2.0, 0.0], [1.0, 1.0], None]})  # window 2: no S1
    obj = CrossModalAlignment(2, projection="none", temperature=0.1, modalities=("s2", "s1"))
    res = obj(StepOutputs([f], [f], [View.identity(3)], {}))
    s, r = 10.0, 1 / math.sqrt(2)  # cosines [[1, r], [0, r]]
    rows = (math.log(1 + math.exp(s * (r - 1))) + math.log(1 + math.exp(-s * r))) / 2
    cols = (math.log(1 + math.exp(-s)) + math.log(2.0)) / 2
    assert res["loss"].item() == pytest.approx((rows + cols) / 2, rel=1e-6)
    assert res["s1-s2"].item() == pytest.approx((rows + cols) / 2, rel=1e-6)


def test_cross_modal_pairs_heads_and_gradients():
    out = _outputs(b=4, mods=("hr", "s2", "s1"), grad=True)
    obj = CrossModalAlignment(D, out_dim=6, pixel=True, max_pixels=20)
    res = obj(out)
    assert {"hr-s1", "hr-s2", "s1-s2", "pixel"} <= set(res) and res["pairs"].item() == 6
    res["loss"].backward()
    for m in ("hr", "s2", "s1"):
        assert out.student[0].modalities[m].grad.abs().sum() > 0
        assert obj.heads[m][0].weight.grad.abs().sum() > 0
    assert json.loads(json.dumps(obj.config()))["name"] == "align"


# --------------------------------------------------------------------------------------
# geo-context prototypes
# --------------------------------------------------------------------------------------
def test_region_rows_follow_the_skysense_grid_from_lat_lon():
    obj = GeoPrototypeLoss(D, n_prototypes=2)
    latlon = torch.tensor([[45.0, 25.0], [-89.9, -179.9], [float("nan"), 0.0]],
                          dtype=torch.float64)
    dlon, dlat = SKYSENSE_GRID
    expected = [math.floor(135 / dlat) * 64 + math.floor(205 / dlon), 0, -1]
    assert obj.region_rows(latlon).tolist() == expected
    assert obj.prototypes.shape == (4096, 2, D)


def _proto_case() -> tuple[GeoPrototypeLoss, StepOutputs, np.ndarray, np.ndarray]:
    obj = GeoPrototypeLoss(2, n_prototypes=2, regions=Regions("global"), epsilon=0.5,
                           temperature=0.5, momentum=0.9)
    protos = np.array([[1.0, 0.0], [0.6, 0.8]])
    obj.prototypes.copy_(torch.tensor(protos, dtype=torch.float32)[None])
    teacher = _const_features({"s2": [[1.0, 0.2], [0.1, 1.0], [1.0, 1.0]]})
    student = _const_features({"s2": [[0.5, 0.5], [1.0, -0.5], [0.2, 1.0]]})
    t = Features(teacher.modalities["s2"], {}, teacher.valid)
    s = Features(student.modalities["s2"].clone().requires_grad_(True), {}, student.valid)
    out = StepOutputs([s, s], [t, t], [View.identity(3)] * 2,
                      {"latlon": torch.tensor([[10.0, 20.0]] * 3, dtype=torch.float64)})
    tx = np.array([[1.0, 0.2], [0.1, 1.0], [1.0, 1.0]])
    sx = np.array([[0.5, 0.5], [1.0, -0.5], [0.2, 1.0]])
    return obj, out, tx, sx


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_geo_prototype_loss_by_hand():
    obj, out, tx, sx = _proto_case()
    protos = obj.prototypes[0].double().numpy()
    q = sinkhorn_np(_unit(tx) @ protos.T, 0.5, 3)  # teacher targets
    z = _unit(sx) @ protos.T / 0.5
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    expected = -(q * logp).sum(1).mean()
    res = obj(out)
    assert res["loss"].item() == pytest.approx(expected, rel=1e-5)
    res["loss"].backward()
    assert out.student[0].fused.grad.abs().sum() > 0 and out.teacher[0].fused.grad is None
    # the EMA update: prototypes move towards the assignment-weighted teacher means
    obj.after_step(0, 10, identity)
    means = (q.T @ _unit(tx)) / q.sum(0)[:, None]
    np.testing.assert_allclose(obj.prototypes[0].numpy(), _unit(0.9 * protos + 0.1 * means),
                               rtol=1e-5)


def test_geo_prototypes_two_micro_batches_equal_their_union_and_two_ranks():
    # micro-batches in different regions: the union is the same two Sinkhorn problems
    a = _outputs(b=3, seed=6, latlon=torch.tensor([[10.0, 20.0]] * 3))
    b = _outputs(b=2, seed=7, latlon=torch.tensor([[-30.0, 100.0]] * 2))
    base = GeoPrototypeLoss(D, n_prototypes=3, level="pixel")
    accum, union, rank0, rank1 = _three_ways(base, a, b)
    moved = (accum.prototypes - base.prototypes).abs().sum((1, 2)) > 0
    assert moved.sum() == 2  # only the two regions seen
    for other in (union, rank0, rank1):
        torch.testing.assert_close(other.prototypes, accum.prototypes, rtol=1e-5, atol=1e-6)
    assert torch.allclose(accum.prototypes.norm(dim=-1), torch.ones(()))


def test_geo_prototype_table_of_given_regions_ignores_the_others():
    regions = Regions("grid", *SKYSENSE_GRID)
    rid = int(regions.ids_from_lonlat(np.array([20.0]), np.array([10.0]))[0])
    obj = GeoPrototypeLoss(D, n_prototypes=2, region_ids=[rid])
    latlon = torch.tensor([[10.0, 20.0], [10.0, 20.0], [-50.0, 0.0]])
    res = obj(_outputs(b=3, latlon=latlon))
    assert obj.prototypes.shape == (1, 2, D)
    assert res["windows_in_table"].item() == pytest.approx(2 / 3)
    cfg = obj.config()
    assert json.loads(json.dumps(cfg)) == cfg and cfg["n_regions"] == 1


# --------------------------------------------------------------------------------------
# location-image CLIP
# --------------------------------------------------------------------------------------
class Recorder(nn.Module):
    """A location encoder that records what it is given."""

    embed_dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 4).double()
        self.seen: torch.Tensor | None = None

    def forward(self, lonlat: torch.Tensor) -> torch.Tensor:
        self.seen = lonlat.clone()
        return self.lin(lonlat)


def test_clip_feeds_lon_lat_and_equals_clip_loss_by_hand():
    torch.manual_seed(0)
    latlon = torch.tensor([[10.0, 20.0], [-30.0, 100.0], [50.0, -60.0]], dtype=torch.float64)
    out = _outputs(b=3, grad=True, latlon=latlon)
    obj = LocationImageCLIP(Recorder(), image_dim=D)
    res = obj(out)
    assert torch.equal(obj.location_encoder.seen, latlon[:, [1, 0]])  # (lon, lat)
    pooled = torch.stack([masked_mean(f.fused, f.valid)[0] for f in out.student]).mean(0)
    expected = clip_loss(obj.image_head(pooled), obj.location_encoder.lin(latlon[:, [1, 0]]),
                         obj.clip.logit_scale)
    assert res["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    res["loss"].backward()
    assert out.student[0].fused.grad is None  # image features detached by default
    assert obj.location_encoder.lin.weight.grad.abs().sum() > 0
    assert obj.clip.logit_scale.grad is not None


def test_clip_trains_the_image_side_when_asked_and_with_a_satclip_encoder():
    out = _outputs(b=4, grad=True)
    enc = LocationEncoder(legendre_polys=4, capacity=16, embed_dim=8)
    obj = LocationImageCLIP(enc, image_dim=D, detach_image=False)
    res = obj(out)
    assert torch.isfinite(res["loss"])
    res["loss"].backward()
    assert out.student[0].fused.grad.abs().sum() > 0
    assert enc.nnet.last_layer.weight.grad.abs().sum() > 0
    cfg = obj.config()
    assert json.loads(json.dumps(cfg)) == cfg and cfg["location_encoder"]["embed_dim"] == 8


def test_step_outputs_need_one_of_each_per_view():
    out = _outputs()
    with pytest.raises(ArgumentError, match="one student"):
        StepOutputs(out.student, out.teacher[:1], out.views, {})


def test_every_objective_on_skysense_tiny_views_end_to_end():
    """make_views -> encode (student and a frozen copy as teacher) -> the four objectives ->
    backward -> after_step, on real per-modality features of skysense-tiny."""
    from xsky.models.skysense import SkySense
    from xsky.train.features import encode
    from xsky.train.views import make_views

    torch.manual_seed(0)
    model = SkySense("skysense-tiny", window=8, modalities=("s2", "s1"))
    teacher = copy.deepcopy(model).requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    b, w = 3, 8
    batch = {"s2": torch.randn(b, 10, 2, w, w, generator=g),
             "s2_valid": torch.ones(b, 2, w, w, dtype=torch.bool),
             "s2_doy": torch.tensor([[30, 200]] * b),
             "s1": torch.randn(b, 2, 2, w, w, generator=g),
             "s1_valid": torch.rand(b, 2, w, w, generator=g) > 0.2,
             "s1_doy": torch.tensor([[35, 210]] * b),
             "latlon": torch.tensor([[45.0, 25.0], [46.0, 26.0], [-10.0, 120.0]],
                                    dtype=torch.float64)}
    views = make_views(batch, 2, generator=g)
    student = [encode(model, x) for x, _ in views]
    with torch.no_grad():
        teach = [encode(teacher, x) for x, _ in views]
    out = StepOutputs(student, teach, [v for _, v in views], batch)
    dim = model.config.embed_dim
    objs = [MultiGranularityContrastive(
                dim, out_dim=16, hidden_dim=16, bottleneck_dim=8, n_objects=3,
                modalities=("s2", "s1")),
            CrossModalAlignment(dim, out_dim=8, modalities=("s2", "s1"), pixel=True),
            GeoPrototypeLoss(dim, n_prototypes=2, level="pixel"),
            LocationImageCLIP(LocationEncoder(4, 16, 8), image_dim=dim)]
    total = sum(o(out)["loss"] for o in objs)
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone_s1.patch_embed.projection.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    for o in objs:
        o.after_step(0, 10, identity)
    assert int(objs[0].step) == 1 and objs[0].center.abs().sum() > 0
