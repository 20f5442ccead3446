"""The optimizer: Muon for the transformer blocks' attention and MLP weights beside AdamW for the rest (conditioning
maps included), as one optimizer that the loop's schedule, the checkpoint and an exact resume treat like AdamW."""
import copy
import dataclasses

import pytest
import torch
from torch import nn

import dreamlet
from dreamlet.checkpoint import UserError
from dreamlet.cli import main
from dreamlet.optimizer import Muon, MuonWithAdamW, make_optimizer

from test_reliability import TINY, assert_same_tensors, saved_step


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 16))
        self.ada = nn.Linear(16, 16)  # a conditioning map: AdamW's

    def forward(self, x):
        return x + self.mlp(x) * self.ada(x.mean(0))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.blocks, self.head = nn.Embedding(64, 16), nn.ModuleList([Block()]), nn.Linear(16, 8)

    def forward(self, ids):
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return Net()


def groups(net: nn.Module) -> list[dict]:
    return [{"params": [p for p in net.parameters() if p.ndim >= 2], "weight_decay": 0.0},
            {"params": [p for p in net.parameters() if p.ndim < 2], "weight_decay": 0.0}]


def one_step(optimizer, net) -> dict[str, torch.Tensor]:
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    net(torch.arange(64)).square().mean().backward()
    optimizer.step()
    return {name: p.detach() - before[name] for name, p in net.named_parameters()}


def test_muon_moves_each_token_mixing_weight_by_an_orthogonal_step_and_everything_else_by_adamw():
    net = tiny_net()
    optimizer = make_optimizer("muon", groups(net), net, lr=0.01, betas=(0.9, 0.99))
    assert isinstance(optimizer, MuonWithAdamW)
    moved = one_step(optimizer, net)
    assert [len(g["params"]) for g in optimizer.muon.param_groups] == [2]  # the block's MLP, not ada nor head
    for name in ("blocks.0.mlp.0.weight", "blocks.0.mlp.2.weight"):  # Muon: the update's singular values are equal
        singular = torch.linalg.svdvals(moved[name])[:8]  # the gradients have rank 8 (the head's width) or more
        assert singular.min() > 0.5 * singular.max(), (name, singular)
    # AdamW's first step moves every entry by about lr (the moment estimates cancel the gradient's size)
    embedding = moved["embed.weight"].abs()
    assert torch.allclose(embedding[embedding > 0], torch.tensor(0.01), rtol=0.05)
    plain = tiny_net()
    adamw = make_optimizer("adamw", groups(plain), plain, lr=0.01, betas=(0.9, 0.99))
    assert isinstance(adamw, torch.optim.AdamW)
    plain_moved = one_step(adamw, plain)
    for name in ("embed.weight", "blocks.0.ada.weight", "head.weight"):  # the same AdamW for the rest
        assert torch.allclose(plain_moved[name], moved[name])
    assert not torch.allclose(plain_moved["blocks.0.mlp.0.weight"], moved["blocks.0.mlp.0.weight"])


def test_muon_is_torchs_update_orthogonalised_in_float32():
    """dreamlet's Muon differs from torch.optim.Muon only in running the Newton-Schulz iteration in float32 off a
    GPU (torch's bfloat16 is 35 times slower on an AVX2 CPU): the same steps within bfloat16's rounding, and the
    same state, so checkpoints of either resume with the other. (Full-rank gradients: the iteration amplifies
    bfloat16's rounding in a low-rank gradient's null space, where float32 stays near 0.)"""
    torch.manual_seed(0)
    start, grads = torch.randn(48, 16), [torch.randn(48, 16) for _ in range(3)]
    moved = []
    for make in (lambda ps: Muon(ps, lr=0.01),
                 lambda ps: torch.optim.Muon(ps, lr=0.01, adjust_lr_fn="match_rms_adamw")):
        weight = nn.Parameter(start.clone())
        optimizer = make([weight])
        for grad in grads:
            weight.grad = grad.clone()
            optimizer.step()
        moved.append(weight.detach() - start)
        assert set(optimizer.state[weight]) == {"momentum_buffer"}
    ours, torchs = moved
    assert ours.dtype == torch.float32 and (ours - torchs).norm() < 0.03 * torchs.norm()


def test_a_group_keeps_its_settings_on_both_sides_and_the_schedule_reaches_them():
    net = tiny_net()
    optimizer = make_optimizer("muon", [{"params": list(net.parameters()), "weight_decay": 0.1, "lr_scale": 2.0}],
                               net, lr=0.01, betas=(0.5, 0.9))
    muon, adamw = optimizer.param_groups
    assert muon["weight_decay"] == adamw["weight_decay"] == 0.1 and muon["lr_scale"] == adamw["lr_scale"] == 2.0
    assert adamw["betas"] == (0.5, 0.9)
    for group in optimizer.param_groups:  # as the training loop sets the learning rate
        group["lr"] = 0.123
    assert [g["lr"] for g in optimizer.muon.param_groups + optimizer.adamw.param_groups] == [0.123, 0.123]


def test_its_state_dict_round_trips_and_the_parts_keep_working_after_a_load():
    net = tiny_net()
    optimizer = make_optimizer("muon", groups(net), net, lr=0.01, betas=(0.9, 0.99))
    one_step(optimizer, net)
    copy_net = tiny_net()
    copy_net.load_state_dict(net.state_dict())
    loaded = make_optimizer("muon", groups(copy_net), copy_net, lr=0.01, betas=(0.9, 0.99))
    loaded.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as from a file: no shared tensors
    assert loaded.muon.state is loaded.state and loaded.adamw.param_groups[-1] is loaded.param_groups[-1]
    optimizer.zero_grad()
    a, b = one_step(optimizer, net), one_step(loaded, copy_net)
    assert all(torch.equal(a[name], b[name]) for name in a)  # the momentum and moments came back


def test_a_muon_run_trains_and_resumes_bit_for_bit(tmp_path):
    """Resumed without --optimizer and --lr, the run keeps the ones it was started with (not the family's)."""
    config = dreamlet.TrainConfig(model="diffusion", steps=8, log_every=2, optimizer="muon", lr=3e-3, **TINY)
    split = dataclasses.replace(config, out=str(tmp_path / "split"), checkpoint_every=4, sample_every=0)
    straight = dataclasses.replace(config, out=str(tmp_path / "straight"), checkpoint_every=0, sample_every=0)

    def stop_at_4(progress):
        if progress.step == 4:
            progress.stop()

    dreamlet.train(split, callback=stop_at_4, quiet=True)
    assert saved_step(tmp_path / "split") == 4
    with pytest.raises(UserError, match=r"--optimizer 'muon' \(this command: 'adamw'\)"):
        dreamlet.train(dataclasses.replace(split, resume=True, optimizer="adamw"), quiet=True)
    dreamlet.train(dataclasses.replace(split, resume=True, optimizer=None, lr=None), quiet=True)  # keeps its own
    dreamlet.train(straight, quiet=True)
    assert_same_tensors(tmp_path / "split" / "checkpoint" / "state.safetensors",
                        tmp_path / "straight" / "checkpoint" / "state.safetensors")
    keys = set(dreamlet.checkpoint.load_tensors(tmp_path / "straight" / "checkpoint" / "state.safetensors"))
    assert any(k.endswith(".momentum_buffer") for k in keys) and any(k.endswith(".exp_avg") for k in keys)


def test_an_unknown_optimizer_is_one_line(capsys):
    assert main(["train", "--optimizer", "sgd", "--steps", "1"]) == 2
    assert "invalid choice: 'sgd'" in capsys.readouterr().err
