"""Bad input to the optimizers: one line, nothing changed (clion_hf/optim/validate.py)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from clion_hf import CLion, Lion
from clion_hf.bench.specs import SpecError, parse_optimizer
from clion_hf.integrations.transformers import OptimArgsError, parse_optim_args


def _param(n: int = 4) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.randn(n))


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- param groups

BAD_GROUPS = [
    (Lion, {"lr": float("nan")}, "lr=nan"),
    (Lion, {"lr": -1.0}, "lr=-1.0"),
    (Lion, {"betas": (2, 3)}, "betas[0]=2"),
    (Lion, {"weight_decay": -5}, "weight_decay=-5"),
    (Lion, {"caution": "yes"}, "caution='yes'"),
    (CLion, {"momentum_dtype": torch.int32}, "momentum_dtype=torch.int32"),
    (CLion, {"fused": True, "foreach": True}, "exclusive"),
    (CLion, {"mode": "element", "nu": 0.0}, "nu=0.0"),
    (CLion, {"lr": torch.tensor([1e-3, 2e-3])}, "invalid lr: a tensor lr must be"),
    (Lion, {"lr": 1e39}, "lr=1e+39: must be at most 3.40282e+38"),  # beyond fp32
    (CLion, {"lr": torch.tensor([1e39], dtype=torch.float64)}, "lr=1e+39: must be at most"),
]


@pytest.mark.parametrize("opt_cls,bad,match", BAD_GROUPS, ids=[b[2] for b in BAD_GROUPS])
def test_param_group_values_are_checked_in_the_constructor(opt_cls, bad, match):
    # refused in a param group too (where they once passed silently, and
    # momentum_dtype=int32 left the momentum at 0 forever)
    groups = [{"params": [_param()]}, {"params": [_param()], **bad}]
    with pytest.raises(ValueError) as err:
        opt_cls(groups, mode="element") if opt_cls is CLion else opt_cls(groups)
    assert match in _one_line(err) and "param_groups[1]" in str(err.value)


@pytest.mark.parametrize("opt_cls,bad,match", BAD_GROUPS, ids=[b[2] for b in BAD_GROUPS])
def test_rejected_add_param_group_leaves_the_optimizer_unchanged(opt_cls, bad, match):
    p, q = _param(), _param()
    opt = opt_cls([p], mode="element") if opt_cls is CLion else opt_cls([p])
    with pytest.raises(ValueError) as err:
        opt.add_param_group({"params": [q], **bad})
    assert match in _one_line(err)
    assert len(opt.param_groups) == 1 and q not in opt.state
    p.grad = torch.randn(4)
    opt.step()


def test_rejected_add_param_group_under_global_mode_is_not_appended():
    # a refused group is not appended (once it was, before the check, and the next
    # step() failed with a bare KeyError)
    p, q = _param(), _param()
    opt = CLion([p], mode="global")
    with pytest.raises(ValueError, match="disagree on"):
        opt.add_param_group({"params": [q], "mode": "element"})
    assert len(opt.param_groups) == 1
    p.grad, q.grad = torch.randn(4), torch.randn(4)
    opt.step()
    assert q not in opt.state and opt.last_step_stats()["sign_fraction"] >= 0


def test_add_param_group_normalises_numpy_values_and_reads_a_generator_once():
    p, q = _param(), _param()
    opt = Lion([p])
    opt.add_param_group({"params": (t for t in [q]), "lr": np.float32(0.5)})
    assert opt.param_groups[1]["params"] == [q]
    assert type(opt.param_groups[1]["lr"]) is float and opt.param_groups[1]["lr"] == 0.5


@pytest.mark.parametrize("opt_cls", [CLion, Lion])
def test_numpy_scalars_are_accepted_as_torch_adamw_accepts_them(opt_cls):
    kw = {"nu": np.float32(1e-3), "mode": "element"} if opt_cls is CLion else {}
    ref_kw = {"nu": float(np.float32(1e-3)), "mode": "element"} if opt_cls is CLion else {}
    p, q = _param(), _param()
    q.data.copy_(p.data)
    a = opt_cls([p], lr=np.float32(0.01), betas=(np.float32(0.9), np.float64(0.99)),
                weight_decay=np.float64(0.1), **kw)  # fmt: skip
    b = opt_cls([q], lr=float(np.float32(0.01)), betas=(float(np.float32(0.9)), 0.99),
                weight_decay=0.1, **ref_kw)  # fmt: skip
    torch.optim.AdamW([_param()], lr=np.float32(0.01))  # the convention followed
    for _ in range(3):
        g = torch.randn(4)
        p.grad, q.grad = g, g.clone()
        a.step()
        b.step()
    assert torch.equal(p, q)


def test_multi_element_tensor_lr_is_refused_naming_lr():
    with pytest.raises(ValueError) as err:
        Lion([_param()], lr=torch.tensor([1e-3, 2e-3]))
    assert "lr" in _one_line(err) and "1-element" in str(err.value)
    Lion([_param()], lr=torch.tensor(1e-3))  # a 1-element tensor lr is fine
    Lion([_param()], lr=torch.tensor([1e-3]))


@pytest.mark.parametrize("impl", [{"fused": True}, {"foreach": True}, {"foreach": False}],
                         ids=["fused", "foreach", "single"])  # fmt: skip
def test_lr_beyond_fp32_range_is_one_rule_on_every_path(impl):
    # lr=1e39 on fp32 parameters: once accepted as finite; then the fused
    # path wrote -inf while foreach/single raised "value cannot be converted to type
    # float without overflow". Refused when given (constructor, option text); and an lr
    # set beyond it later (a scheduler) gets the same line on every path, before any write.
    with pytest.raises(ValueError) as err:
        Lion([_param()], lr=1e39, **impl)
    assert "invalid lr=1e+39" in _one_line(err) and "largest fp32" in str(err.value)
    with pytest.raises(SpecError, match="lr=1e"):
        parse_optimizer("lion:lr=1e39")
    p = _param()
    opt = CLion([p], lr=float(torch.finfo(torch.float32).max), mode="element", **impl)
    p.grad = torch.randn(4)
    opt.step()  # the largest fp32 lr is accepted
    before = p.detach().clone()
    opt.param_groups[0]["lr"] = 1e39
    with pytest.raises(ValueError) as err:
        opt.step()
    assert "invalid lr=1e+39" in _one_line(err)
    assert torch.equal(p.detach(), before)


# --------------------------------------------------------------------------- load_state_dict


def _trained(opt_cls, **kw):
    p = _param(1000)
    opt = opt_cls([p], **kw)
    p.grad = torch.randn(1000)
    opt.step()
    return p, opt


@pytest.mark.parametrize("shape", [(10,), (2000,), (10, 100)])
@pytest.mark.parametrize("fused", [None, True, False])
def test_load_state_dict_refuses_momentum_of_another_shape(shape, fused):
    # a loaded momentum of the wrong shape is refused: the fused kernel once read and wrote
    # past a (10,) momentum (segfault, "corrupted size vs. prev_size" or non-finite
    # parameters), and (2000,) was accepted
    p, opt = _trained(Lion, fused=fused)
    saved = copy.deepcopy(opt.state_dict())
    saved["state"][0]["exp_avg"] = torch.zeros(shape)
    before = opt.state[p]["exp_avg"].clone()
    with pytest.raises(ValueError) as err:
        opt.load_state_dict(saved)
    message = _one_line(err)
    assert "param_groups[0]['params'][0]" in message and str(shape) in message
    assert torch.equal(opt.state[p]["exp_avg"], before)  # nothing was loaded


def test_load_state_dict_refuses_integer_or_real_momentum_of_complex_params():
    p, opt = _trained(Lion)
    saved = copy.deepcopy(opt.state_dict())
    saved["state"][0]["exp_avg"] = torch.zeros(1000, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"exp_avg has dtype torch.int64"):
        opt.load_state_dict(saved)
    z = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    opt = Lion([z])
    saved = {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": opt.state_dict()[
        "param_groups"]}  # fmt: skip
    with pytest.raises(ValueError, match="needs a complex one"):
        opt.load_state_dict(saved)


@pytest.mark.parametrize("impl", [{"fused": True}, {"foreach": True}, {"foreach": False}])
def test_state_of_the_wrong_shape_is_refused_before_any_kernel_runs(impl):
    # State edited by hand: the check runs on every path before the update
    p, opt = _trained(CLion, mode="element", **impl)
    opt.state[p]["exp_avg"] = torch.zeros(10)
    before = p.detach().clone()
    p.grad = torch.randn(1000)
    with pytest.raises(ValueError, match=r"params\[0\]: exp_avg has shape \(10,\)"):
        opt.step()
    assert torch.equal(p, before)


def test_load_state_dict_refuses_bad_groups_at_load():
    # refused at load, not at step() (mode='bogus' once loaded and then raised KeyError)
    p, opt = _trained(CLion, mode="element")
    bad = [("mode", "bogus", "mode='bogus'"), ("lr", -1.0, "lr=-1.0"),
           ("nu", float("nan"), "nu=nan"), ("betas", (0.9,), "betas=")]  # fmt: skip
    for key, value, match in bad:
        saved = copy.deepcopy(opt.state_dict())
        saved["param_groups"][0][key] = value
        with pytest.raises(ValueError) as err:
            opt.load_state_dict(saved)
        assert match in _one_line(err) and "loaded param_groups[0]" in str(err.value)
        assert opt.param_groups[0]["mode"] == "element" and opt.param_groups[0]["lr"] == 1e-4
    saved = copy.deepcopy(opt.state_dict())
    two = CLion([{"params": [_param()]}, {"params": [_param()]}], mode="global")
    state = two.state_dict()
    state["param_groups"][1]["nu"] = 0.5
    with pytest.raises(ValueError, match="disagree on"):
        two.load_state_dict(state)


# --------------------------------------------------------------------------- overlapping views


def test_overlapping_parameter_views_are_refused():
    # parameters sharing memory are refused: updating it twice gave path-dependent results
    base = torch.zeros(10)
    a, b = torch.nn.Parameter(base[:6]), torch.nn.Parameter(base[4:])
    with pytest.raises(ValueError) as err:
        Lion([a, b])
    assert "parameters 0 and 1" in _one_line(err) and "share memory" in str(err.value)
    opt = Lion([a])
    with pytest.raises(ValueError, match="share memory"):
        opt.add_param_group({"params": [b]})
    assert len(opt.param_groups) == 1
    grid = torch.zeros(4, 6)
    interleaved = torch.nn.Parameter(grid[:, ::2]), torch.nn.Parameter(grid[:, 1::2])
    with pytest.raises(ValueError, match="share memory"):
        CLion([interleaved[0], torch.nn.Parameter(grid[1:3, 2:4])])


@pytest.mark.parametrize("impl", [{"fused": True}, {"foreach": True}, {"foreach": False}])
def test_views_that_share_a_storage_but_no_element_are_allowed(impl):
    grid = torch.randn(4, 6)
    cols = [torch.nn.Parameter(grid[:, ::2]), torch.nn.Parameter(grid[:, 1::2]),
            torch.nn.Parameter(torch.randn(3))]  # fmt: skip
    twins = [torch.nn.Parameter(c.detach().clone()) for c in cols]
    opt, ref = Lion(cols, lr=0.1, **impl), Lion(twins, lr=0.1, foreach=False)
    for _ in range(2):
        for c, t in zip(cols, twins, strict=True):
            c.grad = torch.randn(c.shape)
            t.grad = c.grad.clone()
        opt.step()
        ref.step()
    for c, t in zip(cols, twins, strict=True):
        assert torch.equal(c, t)


# --------------------------------------------------------------------------- option text


def test_option_text_is_parsed_alike_by_optim_args_and_bench_specs():
    # One parser: on/off were accepted by --optim_args but not by the bench specs
    from clion_hf.optim.validate import parse_option

    for text, value in (("on", True), ("off", False), ("yes", True), ("0", False)):
        assert parse_optim_args("lion", f"caution={text}")["caution"] is value
        assert parse_optimizer(f"lion:caution={text}").get("caution") is value
        assert parse_option("caution", text) is value
    for bad in ("nu=0", "nu=nan", "nu=abc", "mode=layer", "beta1=1"):
        with pytest.raises(OptimArgsError):
            parse_optim_args("clion", bad)
        with pytest.raises(SpecError):
            parse_optimizer(f"clion:{bad}")
        with pytest.raises(ValueError):
            parse_option(*bad.split("="))
